"""The real-time path: the Kafka stream processor, event decoding, topics and metrics."""
