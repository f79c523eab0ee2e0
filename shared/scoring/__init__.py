"""Scoring: one ONNX model artifact, scored nightly on Spark + Delta and live on Kafka."""

__all__: list[str] = []
