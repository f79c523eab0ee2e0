"""Reading refuses tampered or incomplete artifacts; scoring equals direct onnxruntime."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
from scoring.errors import ArtifactIncompleteError, ChecksumMismatchError, ContractError
from scoring.model.artifact import Artifact, cached_scorer, read_artifact_dir
from scoring.model.contract import CONTRACT_FILE, validate
from scoring.model.features import model_inputs


def _read(folder: Path) -> Artifact:
    return read_artifact_dir(folder, str(folder))


@pytest.fixture
def copy(artifact_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(artifact_dir, tmp_path / "model"))


def test_scores_equal_direct_onnxruntime_bit_for_bit(
    artifact_dir: Path, demo_table: pa.Table
) -> None:
    artifact = _read(artifact_dir)
    result = artifact.scorer().score(demo_table)
    valid = validate(demo_table, artifact.contract.features).valid
    assert result.rejected == int((~valid).sum()) > 0
    session = ort.InferenceSession(artifact.onnx_bytes, providers=["CPUExecutionProvider"])
    dtypes = {
        i.name: (np.dtype(object) if i.type == "tensor(string)" else np.dtype(np.float32))
        for i in session.get_inputs()
    }
    rows = demo_table.filter(pa.array(valid))
    direct = session.run(["probabilities"], model_inputs(rows, artifact.contract, dtypes))[0][:, 1]
    scored = result.score.filter(pa.array(valid)).to_numpy()
    assert np.array_equal(scored, direct.astype(np.float64))
    labels = result.label.filter(pa.array(valid)).to_numpy()
    threshold = artifact.contract.output.threshold
    assert np.array_equal(labels, (direct >= threshold).astype(np.int32))
    assert 0 < labels.sum() < labels.size
    assert result.score.null_count == result.label.null_count == result.rejected


def test_scores_do_not_depend_on_batch_size(artifact_dir: Path, demo_table: pa.Table) -> None:
    scorer = _read(artifact_dir).scorer()
    whole = scorer.score(demo_table).score.to_numpy(zero_copy_only=False)
    pieces = np.concatenate(
        [
            scorer.score(demo_table.slice(i, 333)).score.to_numpy(zero_copy_only=False)
            for i in range(0, demo_table.num_rows, 333)
        ]
    )
    assert np.array_equal(whole, pieces, equal_nan=True)
    # One row at a time too: onnxruntime computes a single row by another kernel path
    # (the demo's LinearClassifier rounds differently), which a micro-batch of one event
    # or the last row of a partition would otherwise meet.
    alone = np.concatenate(
        [
            scorer.score(demo_table.slice(i, 1)).score.to_numpy(zero_copy_only=False)
            for i in range(200)
        ]
    )
    assert np.array_equal(whole[:200], alone, equal_nan=True)


def test_tampered_graph_is_refused(copy: Path) -> None:
    graph = copy / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[-1] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match="altered or partly copied"):
        _read(copy)


def test_truncated_graph_is_refused(copy: Path) -> None:
    graph = copy / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:100])
    with pytest.raises(ChecksumMismatchError):
        _read(copy)


@pytest.mark.parametrize("missing", [CONTRACT_FILE, "model.onnx"])
def test_incomplete_artifact_is_refused(copy: Path, missing: str) -> None:
    (copy / missing).unlink()
    with pytest.raises(ArtifactIncompleteError, match=missing):
        _read(copy)


def test_contract_that_does_not_fit_the_graph_is_refused(copy: Path) -> None:
    text = (copy / CONTRACT_FILE).read_text().replace('"probabilities"', '"nope"')
    (copy / CONTRACT_FILE).write_text(text)
    with pytest.raises(ContractError, match="no output 'nope'"):
        _read(copy).scorer()


def test_session_is_built_once_per_process(artifact_dir: Path) -> None:
    artifact = _read(artifact_dir)
    calls: list[int] = []

    def graph() -> bytes:
        calls.append(1)
        return artifact.onnx_bytes

    first = cached_scorer(artifact.contract, graph, threads=2)
    again = cached_scorer(artifact.contract, graph, threads=2)
    assert first is again and len(calls) == 1
    stricter = artifact.contract.model_copy(
        update={"output": artifact.contract.output.model_copy(update={"threshold": 0.9})}
    )
    assert cached_scorer(stricter, graph, threads=2) is not first
    assert first.session.get_session_options().intra_op_num_threads == 2
    assert first.session.get_session_options().inter_op_num_threads == 1
