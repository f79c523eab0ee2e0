"""The --contract hints file: checked before conversion, every problem named at once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scoring.dev.demo.train import TrainedModel
from scoring.errors import ContractError
from scoring.lifecycle import hints
from scoring.lifecycle.packaging import build, prepare
from scoring.model.contract import Contract, Feature


def _refused(trained: TrainedModel, spec: Any) -> str:
    with pytest.raises(ContractError) as refused:
        build(trained.model_file, trained.sample_file, key="transaction_id", spec=spec)
    assert refused.value.exit_code == 2
    return str(refused.value)


def test_invalid_json_is_one_line_with_where(trained: TrainedModel, tmp_path: Path) -> None:
    path = tmp_path / "hints.json"
    path.write_text('{"key": "transaction_id",\n "features": [}\n')
    with pytest.raises(ContractError) as refused:
        prepare(trained.model_file, trained.sample_file, spec_file=path)
    message = str(refused.value)
    assert message.startswith(
        f"The --contract file {path} is not valid JSON: Expecting value at line 2, column 15."
    )
    assert "\n" not in message


def test_every_problem_is_listed_at_once_naming_the_file(
    trained: TrainedModel, tmp_path: Path
) -> None:
    path = tmp_path / "hints.json"
    spec = {
        "key": "transaction_id",
        "featurs": [],
        "output": {"threshold": 1.5},
        "features": [
            {"name": "amount", "nulable": True},
            {"name": "hour", "nullable": "yes", "min": 10, "max": 2},
            {"name": "customer_age", "min": "18"},
            {"name": "channel", "categories": []},
            {"name": "channel"},
            {"min": 3},
        ],
    }
    path.write_text(json.dumps(spec))
    with pytest.raises(ContractError) as refused:
        prepare(trained.model_file, trained.sample_file, spec_file=path)
    assert str(refused.value).splitlines() == [
        f"The --contract file {path} has 9 problems:",
        "  - unknown key 'featurs' (did you mean 'features'?); the valid keys are key, "
        "features, output, training_data, metrics, code_commit",
        "  - output: 'threshold' must be a number from 0 to 1, not 1.5",
        "  - feature 'amount': unknown key 'nulable' (did you mean 'nullable'?); the valid "
        "keys are name, type, nullable, min, max, categories",
        "  - feature 'hour': 'nullable' must be true or false, not 'yes'",
        "  - feature 'hour': 'min' 10 is above 'max' 2",
        "  - feature 'customer_age': 'min' must be a finite number, not '18'",
        "  - feature 'channel': 'categories' must be a non-empty list of distinct strings",
        "  - feature 'channel': listed twice",
        """  - features[5] must be an object with a 'name', like {"name": "amount"}""",
        "See README: The --contract hints file; `scoring model package ... --print-contract` "
        "prints one for your model to start from.",
    ]


def test_hints_that_do_not_fit_the_model_are_refused(trained: TrainedModel) -> None:
    message = _refused(
        trained,
        {
            "features": [
                {"name": "amount", "categories": ["a"]},
                {"name": "channel", "min": 0},
                {"name": "amout"},
                {"name": "country", "type": "double"},
            ]
        },
    )
    assert "has 4 problems" in message
    assert "feature 'amount': 'categories' apply to strings; it is a double: give 'min'/'max'" in (
        message
    )
    assert "feature 'channel': 'min'/'max' apply to numbers; it is a string: give 'categories'" in (
        message
    )
    assert "feature 'amout' (did you mean 'amount'?): the model does not take it; it takes" in (
        message
    )
    assert "feature 'country': 'type' 'double', but the model takes it as 'string'" in message


def test_a_written_contract_is_accepted_as_hints(trained: TrainedModel, artifact_dir: Path) -> None:
    """An artifact's scoring.json: what package derives is recomputed or must agree."""
    written = json.loads((artifact_dir / "scoring.json").read_text())
    written["onnx_sha256"] = "0" * 64  # another graph's: recomputed, not taken
    packaged = build(trained.model_file, trained.sample_file, spec=written)
    original = Contract.model_validate_json((artifact_dir / "scoring.json").read_text())
    assert packaged.contract.features == original.features
    assert packaged.contract.output == original.output
    assert packaged.contract.onnx_sha256 != "0" * 64

    tensor = {**written, "input_mode": "tensor", "tensor_input": "input"}
    message = _refused(trained, tensor)
    assert "'input_mode' 'tensor', but the graph takes 'columns'" in message
    assert "'tensor_input' 'input', but the graph's is None" in message


def test_a_contract_the_hints_make_invalid_is_refused(trained: TrainedModel) -> None:
    with pytest.raises(ContractError) as refused:
        build(trained.model_file, trained.sample_file, key="amount", spec={})
    assert str(refused.value) == (
        "The model's contract is invalid: the key column 'amount' cannot also be a feature. "
        "Check --key and the --contract file."
    )


JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
KEYS = st.sampled_from(
    [*hints.TOP_KEYS, *hints.FEATURE_KEYS, *hints.OUTPUT_KEYS, "input_mode", "onnx_sha256"]
)
FEATURE = st.dictionaries(st.sampled_from(hints.FEATURE_KEYS), JSON) | st.fixed_dictionaries(
    {"name": st.sampled_from(["a", "s", "x"])},
    optional={k: JSON | st.sampled_from(["string", "double"]) for k in hints.FEATURE_KEYS[1:]},
)
SPEC = JSON | st.dictionaries(
    KEYS, JSON | st.lists(FEATURE, max_size=3) | st.dictionaries(KEYS, JSON)
)


@given(SPEC)
def test_any_hints_either_fit_or_are_refused_with_a_contract_error(spec: Any) -> None:
    """Whatever JSON a hints file holds: a contract, or a ContractError, nothing else."""
    features = [Feature(name="a", type="double"), Feature(name="s", type="string")]
    draft = {
        "key": "id",
        "features": [f.model_dump() for f in features],
        "output": {"score_output": "probabilities"},
        "onnx_sha256": "0" * 64,
    }
    try:
        hints.check(spec)
        hints.check_against(spec, features, None)
        contract = hints.apply(draft, spec)
    except ContractError:
        return
    assert contract.feature_names == ["a", "s"]


def test_the_printed_hints_give_the_same_contract(trained: TrainedModel) -> None:
    spec = json.loads(trained.contract_file.read_text())
    first = build(trained.model_file, trained.sample_file, spec=spec).contract
    printed = hints.from_contract(first)
    assert set(printed) == {"key", "features", "output", "training_data", "metrics"}
    hints.check(printed)
    again = build(trained.model_file, trained.sample_file, spec=printed).contract
    assert again.features == first.features and again.output == first.output
    assert again.training_data == first.training_data and again.metrics == first.metrics
