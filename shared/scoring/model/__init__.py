"""The model core every path shares: the artifact, its scoring contract, feature encoding,
and the decoder of JSON event values (the stream, the faust agent and the public API).

It knows nothing of the registry: a ``models:/`` URI is resolved above it
(:mod:`scoring.lifecycle.loading`), which hands it a folder.
"""
