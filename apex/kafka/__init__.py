"""Kafka adapters: topology, client factories, the dead-letter queue."""
