"""The ``scoring`` command line: model packaging and registry operations, batch runs, demo.

One module per command group, each thin over its domain package: ``model``
(``scoring.lifecycle``), ``batch`` (``scoring.batch``), ``stream`` (``scoring.stream``),
``serve`` (``scoring.serve``), ``dev`` (``scoring.dev``) and ``demo``; ``common`` holds
what they share. Commands import their domain when they run, so ``scoring --help`` loads
no Spark, MLflow or onnxruntime.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from typing import Annotated

import typer

from scoring.cli import batch, demo, dev, model, serve, stream

__all__ = ["app", "main"]

app = typer.Typer(
    help="Score one ONNX model artifact on Delta tables (in one process or on Spark), on "
    "Kafka and on request.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(model.app, name="model")
app.add_typer(batch.app, name="batch")
app.add_typer(stream.app, name="stream")
app.add_typer(dev.app, name="dev")
app.command("demo")(demo.demo)
app.command("serve")(serve.serve)


@app.callback()
def _global_options(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # mlflow sets its own level when it is (lazily) imported and logs migrations at INFO.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", logging.getLevelName(level))


def main() -> None:
    """The console script: the app, then an exit that cannot abort after the work is done.

    In a process that read Delta tables with delta-rs, pyarrow's scanner threads over
    delta-rs's file system can outlive the interpreter and abort it while it tears down
    (``terminate called without an active exception``, exit -6; delta-rs #2184, polars
    #24169), turning a finished job into a failed task. Such a process runs its exit
    handlers (logging, MLflow), flushes, and ends without the native teardown.
    """
    try:
        app()
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    if "deltalake" not in sys.modules:
        sys.exit(code)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
