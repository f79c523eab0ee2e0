"""The demo: a deterministic feature table, a fraud model trained on it, and the end-to-end run."""
