"""What runs in the service processes: the producer and the consumer, the watchers and read-backs they serve, and the retention task."""
