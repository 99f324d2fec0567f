"""What runs in the service processes.

The producer and the consumer, the watchers and read-backs they serve, and the retention task.
"""
