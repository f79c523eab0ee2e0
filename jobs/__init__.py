"""Entry points: thin wrappers that parse arguments and call :mod:`shared`."""
