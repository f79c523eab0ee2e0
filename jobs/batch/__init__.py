"""spark-submit entry points for nightly batch scoring."""
