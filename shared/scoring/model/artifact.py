"""Reading and verifying the one model artifact, and scoring Arrow batches with it.

:func:`read_artifact_dir` reads an artifact folder, however it was found: a registry
version is resolved and downloaded above the model core (by
:func:`scoring.lifecycle.loading.load_artifact`, which both the batch job and the stream
processor call), and only its folder is handed down here. Both paths score with
:meth:`Scorer.score`; nothing else in the project touches onnxruntime. Reading an artifact
reads a JSON contract and ONNX bytes only: no pickle, no user code runs.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa

from scoring.errors import ArtifactIncompleteError, ChecksumMismatchError, ContractError
from scoring.model.contract import CONTRACT_FILE, Contract, validate
from scoring.model.features import model_inputs

__all__ = [
    "Artifact",
    "ScoredBatch",
    "Scorer",
    "cached_scorer",
    "read_artifact_dir",
    "sha256_bytes",
]

log = logging.getLogger(__name__)

_ORT_DTYPES: dict[str, np.dtype] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(string)": np.dtype(object),
}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ScoredBatch:
    """Scores for every input row, in input order.

    ``score`` (float64) and ``label`` (int32) are null where ``reason`` says why a row was
    refused; ``kinds`` holds each reason's category and ``valid`` is True where scored.
    """

    score: pa.Array
    label: pa.Array
    reason: pa.Array
    valid: np.ndarray
    kinds: list[str | None]

    @property
    def rejected(self) -> int:
        return int((~self.valid).sum())

    @property
    def reason_kind(self) -> pa.Array:
        """Each refused row's reason category (see ``contract.REASON_KINDS``), else null."""
        return pa.array(self.kinds, pa.string())


class Scorer:
    """One onnxruntime session plus the contract it is checked against."""

    def __init__(self, onnx_bytes: bytes, contract: Contract, threads: int = 1) -> None:
        options = ort.SessionOptions()
        # Spark sets OMP_NUM_THREADS, which onnxruntime ignores: without these, every
        # session starts one thread per core and concurrent tasks oversubscribe the CPU.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(
                onnx_bytes, options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own non-exported types
            raise ContractError(f"onnxruntime cannot load the ONNX graph: {exc}") from exc
        self.contract = contract
        self.dtypes = _check_graph_fits(self.session, contract)

    def predict(self, data: pa.RecordBatch | pa.Table) -> np.ndarray:
        """Raw scores (float64) for rows already known to be valid.

        A single row is scored beside a copy of itself: onnxruntime takes another kernel
        path for one row (e.g. a matrix-vector product for ``LinearClassifier``) whose
        sums round differently, and a row's score must not depend on how many rows share
        its call (a micro-batch of one event, the last row of a partition or batch).
        """
        if data.num_rows == 1:
            return self.predict(data.take(pa.array([0, 0])))[:1]
        feeds = model_inputs(data, self.contract, self.dtypes)
        out = self.session.run([self.contract.output.score_output], feeds)[0]
        out = np.asarray(out)
        if out.ndim == 2:
            index = self.contract.output.score_index
            out = out[:, index if index is not None and out.shape[1] > 1 else 0]
        return out.astype(np.float64, copy=False).reshape(-1)

    def score(self, data: pa.RecordBatch | pa.Table) -> ScoredBatch:
        """Validate every row, score the valid ones, and say why the others were refused."""
        checked = validate(data, self.contract.features)
        n = data.num_rows
        scores = np.full(n, np.nan)
        rows = np.flatnonzero(checked.valid)
        if rows.size == n and n:
            scores = self.predict(data)
        elif rows.size:
            scores[rows] = self.predict(data.take(pa.array(rows)))
        invalid = ~checked.valid
        score = pa.array(scores, pa.float64(), mask=invalid)
        output = self.contract.output
        if output.task == "binary_classification":
            with np.errstate(invalid="ignore"):
                labels = (scores >= output.threshold).astype(np.int32)
            label = pa.array(labels, pa.int32(), mask=invalid)
        else:
            label = pa.nulls(n, pa.int32())
        return ScoredBatch(
            score=score,
            label=label,
            reason=pa.array(checked.reasons, pa.string()),
            valid=checked.valid,
            kinds=checked.kinds,
        )


def _check_graph_fits(session: ort.InferenceSession, contract: Contract) -> dict[str, np.dtype]:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    problems: list[str] = []
    if contract.input_mode == "columns":
        expected = set(contract.feature_names)
        if missing := sorted(set(inputs) - expected):
            problems.append(f"graph inputs {missing} are not features in the contract")
        if extra := sorted(expected - set(inputs)):
            problems.append(f"contract features {extra} are not graph inputs")
    elif contract.tensor_input not in inputs or len(inputs) != 1:
        problems.append(f"the graph's inputs {sorted(inputs)} are not [{contract.tensor_input}]")
    else:
        width = inputs[contract.tensor_input].shape[-1]
        if isinstance(width, int) and width != len(contract.features):
            problems.append(
                f"the graph expects {width} columns, the contract lists "
                f"{len(contract.features)} features"
            )
    unsupported = sorted(n for n, i in inputs.items() if i.type not in _ORT_DTYPES)
    if unsupported:
        problems.append(f"graph inputs {unsupported} have unsupported types")
    score = outputs.get(contract.output.score_output)
    if score is None:
        problems.append(
            f"the graph has no output {contract.output.score_output!r} (it has {sorted(outputs)})"
        )
    elif not score.type.startswith("tensor("):
        problems.append(
            f"output {score.name!r} is {score.type}, not a tensor; convert "
            "classifiers without ZipMap"
        )
    if problems:
        raise ContractError(
            "The ONNX graph does not fit its scoring contract: " + "; ".join(problems) + "."
        )
    return {name: _ORT_DTYPES[i.type] for name, i in inputs.items()}


@dataclass(frozen=True)
class Artifact:
    """A verified model artifact: contract plus ONNX bytes, with its registry identity."""

    contract: Contract
    onnx_bytes: bytes = field(repr=False)
    source: str
    name: str | None = None
    version: str | None = None

    @property
    def sha256(self) -> str:
        return self.contract.onnx_sha256

    def scorer(self, threads: int = 1) -> Scorer:
        """The process-wide scorer for this artifact, built on first use."""
        return cached_scorer(self.contract, lambda: self.onnx_bytes, threads)


_SCORERS: dict[tuple[str, int], Scorer] = {}


def cached_scorer(contract: Contract, onnx_bytes: Callable[[], bytes], threads: int = 1) -> Scorer:
    """One scorer per process per graph: later calls reuse the first session.

    Keyed by the whole contract (which holds the graph's checksum), never by an alias, so
    a cached scorer can never serve another version, threshold or range than the one asked
    for. ``onnx_bytes`` is only called on a miss (on a Spark executor it reads a broadcast
    variable), and what it returns is checked against the contract before use.
    """
    key = (sha256_bytes(contract.to_json().encode()), threads)
    scorer = _SCORERS.get(key)
    if scorer is None:
        graph = onnx_bytes()
        actual = sha256_bytes(graph)
        if actual != contract.onnx_sha256:
            raise ChecksumMismatchError(
                "the shipped graph", contract.onnx_sha256, actual, CONTRACT_FILE
            )
        scorer = _SCORERS[key] = Scorer(graph, contract, threads)
        log.info(
            "onnxruntime session built for graph %s (%d threads)",
            contract.onnx_sha256[:12],
            threads,
        )
    return scorer


def read_artifact_dir(
    directory: Path, source: str, expected_sha: str | None = None, **identity: str | None
) -> Artifact:
    """Read and verify an artifact folder (``scoring.json`` + the ONNX file it names).

    Args:
        directory: the folder on local disk (a registry version is downloaded first).
        source: how the caller named it, shown in errors and kept as ``Artifact.source``.
        expected_sha: the graph's checksum as the registry recorded it, checked as well.
        identity: ``name`` and ``version`` in the registry, which predictions record.

    Raises:
        ArtifactIncompleteError: the contract or the graph it names is missing.
        ChecksumMismatchError: the graph is not the one the contract (or registry) names.
    """
    contract_path = directory / CONTRACT_FILE
    if not contract_path.is_file():
        raise ArtifactIncompleteError(source, CONTRACT_FILE)
    contract = Contract.read(contract_path)
    onnx_path = directory / contract.onnx_file
    if not onnx_path.is_file():
        raise ArtifactIncompleteError(source, contract.onnx_file)
    onnx_bytes = onnx_path.read_bytes()
    actual = sha256_bytes(onnx_bytes)
    if actual != contract.onnx_sha256:
        raise ChecksumMismatchError(source, contract.onnx_sha256, actual, CONTRACT_FILE)
    if expected_sha is not None and actual != expected_sha:
        raise ChecksumMismatchError(source, expected_sha, actual, "registry record")
    return Artifact(contract=contract, onnx_bytes=onnx_bytes, source=source, **identity)
