"""``scoring serve``: the artifact every path scores, answered over HTTP and gRPC.

The Open Inference Protocol (KServe's v2) and KServe's v1 ``instances``, on KServe's
``ModelServer`` (ADR 0012): :mod:`~scoring.serve.tensors` reads requests into the
contract's rows, :mod:`~scoring.serve.model` scores them, :mod:`~scoring.serve.server`
binds, limits and secures the server, :mod:`~scoring.serve.payload_log` writes every
prediction to Kafka.

kserve parses the process's command line when it is first imported (its own flags, such
as ``--http_port``), so it is imported here with an empty one: our flags are not its.
"""

from __future__ import annotations

import sys

_argv, sys.argv = sys.argv, sys.argv[:1]
try:
    import kserve  # noqa: F401
finally:
    sys.argv = _argv
