"""Local components for development and tests (the Kafka broker) and the demo."""
