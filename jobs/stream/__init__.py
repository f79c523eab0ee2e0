"""The Kafka stream processor (faust-streaming) that scores events with the same artifact."""
