"""The real-time path: the Kafka stream processor, its wire format, topics and metrics.

``faust_agent`` gives an existing faust app a scoring agent (the ``faust`` extra).
"""
