"""Running the lab: the stack of processes (embedded) or containers (compose), the brokers, and the gateway
rendered from kong.yml."""
