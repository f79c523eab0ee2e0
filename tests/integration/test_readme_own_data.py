"""The README's "Using it with your own model and table", followed verbatim by a newcomer.

Nothing here comes from the project: the model is a scikit-learn pipeline trained on
rows made with numpy and pandas, the sample is written by pandas, the table by delta-rs
and the events by kafka-python. The hints file is the README's own example. The blocks
marked ``<!-- readme-own-data -->`` run in order in one bash session in the folder
holding those files, with the project's venv on the PATH and no setting of ours in the
environment; the block marked ``<!-- readme-own-data: runs until stopped -->`` (the
stream processor) then runs until the test has read its predictions and sends SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable, write_deltalake
from kafka import KafkaAdminClient, KafkaProducer
from scoring.settings import PROJECT_ROOT
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from tests.integration.kafka_helpers import read_all
from tests.integration.test_readme import marked_blocks

pytestmark = pytest.mark.integration

assert PROJECT_ROOT is not None, "the tests run from a checkout"
README = (PROJECT_ROOT / "README.md").read_text()
VENV_BIN = PROJECT_ROOT / ".venv" / "bin"
DATE = "2026-11-20"
EVENTS = 300


def blocks(mark: str) -> list[str]:
    """The code of the fenced blocks right after ``mark``, in README order."""
    return [code for _, code in marked_blocks(README, mark)]


def transactions(n: int, seed: int = 7) -> pd.DataFrame:
    """Card transactions over three dates, with missing countries, made with numpy."""
    rng = np.random.default_rng(seed)
    days = [date(2026, 11, 18) + timedelta(days=int(d)) for d in rng.integers(0, 3, n)]
    amount = rng.gamma(2.0, 60.0, n).round(2)
    country = rng.choice(np.array(["DE", "FR", "GB", "US", None], dtype=object), n)
    category = rng.choice(np.array(["grocery", "travel", "online", "fuel"], dtype=object), n)
    card_age = rng.integers(0, 3000, n)
    risk = 0.004 * amount - 0.001 * card_age + (category == "online") * 1.5
    return pd.DataFrame(
        {
            "transaction_id": [f"tx-{i:06d}" for i in range(n)],
            "amount": amount,
            "merchant_category": category,
            "country": country,
            "card_age_days": card_age.astype("int64"),
            "is_fraud": (risk + rng.normal(0, 1, n) > 1.5).astype("int64"),
            "ds": days,
        }
    )


def fraud_pipeline(rows: pd.DataFrame) -> Pipeline:
    """A common pipeline: numbers scaled, strings imputed ("" is missing) and one-hot encoded."""
    strings = make_pipeline(
        SimpleImputer(missing_values="", strategy="constant", fill_value="missing"),
        OneHotEncoder(handle_unknown="ignore"),
    )
    pipeline = Pipeline(
        [
            (
                "features",
                ColumnTransformer(
                    [
                        ("numbers", StandardScaler(), ["amount", "card_age_days"]),
                        ("strings", strings, ["merchant_category", "country"]),
                    ]
                ),
            ),
            ("model", LogisticRegression(max_iter=500)),
        ]
    )
    features = rows[["amount", "card_age_days", "merchant_category", "country"]].fillna("")
    return pipeline.fit(features, rows["is_fraud"])


def partitions_once_made(
    bootstrap: str, topics: tuple[str, ...], worker: subprocess.Popen[str], timeout: float = 120
) -> dict[str, int]:
    """The partition counts of ``topics`` as soon as all exist (while ``worker`` runs)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and worker.poll() is None:
            if set(topics) <= set(admin.list_topics()):
                described = admin.describe_topics(list(topics))
                return {t["name"]: len(t["partitions"]) for t in described}
            time.sleep(0.5)
    finally:
        admin.close()
    raise AssertionError(f"the worker made no {topics} (exit code {worker.poll()})")


@pytest.fixture
def own_folder(tmp_path: Path) -> Path:
    """model.joblib, sample.parquet, hints.json and lake/transactions, as a user has them."""
    rows = transactions(3_000)
    joblib.dump(fraud_pipeline(rows), tmp_path / "model.joblib")
    features = ["transaction_id", "amount", "merchant_category", "country", "card_age_days"]
    rows[features].head(500).to_parquet(tmp_path / "sample.parquet")
    (hints,) = blocks("<!-- readme-own-data: hints.json -->")
    (tmp_path / "hints.json").write_text(hints)
    write_deltalake(str(tmp_path / "lake" / "transactions"), rows, partition_by=["ds"])
    return tmp_path


@pytest.fixture
def user_env(own_folder: Path) -> Iterator[dict[str, str]]:
    """A shell with the venv on the PATH and none of our settings; the dev broker stopped after."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SCORING_", "MLFLOW_", "KAFKA_", "AWS_"))
        and k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    env["PATH"] = f"{VENV_BIN}:{env['PATH']}"
    yield env
    subprocess.run(["scoring", "dev", "down"], cwd=own_folder, env=env, timeout=120, check=False)


def test_a_newcomer_follows_the_readme_with_their_own_model_and_table(
    own_folder: Path, user_env: dict[str, str]
) -> None:
    steps = blocks("<!-- readme-own-data -->")
    assert steps, "no README block marked for this test"
    script = "set -euo pipefail\n" + "\n".join(steps)
    script += '\necho "KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS"\n'
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=own_folder,
        env=user_env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    # The contract the README says --print-contract prints for this model.
    printed = subprocess.run(
        ["scoring", "model", "package", "model.joblib", "--sample", "sample.parquet",
         "--key", "transaction_id", "--print-contract"],
        cwd=own_folder, env=user_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    (shown,) = blocks("<!-- readme-own-data: printed contract -->")
    assert json.loads(printed.stdout) == json.loads(shown)
    # Said once where the data dir is being made, on stderr.
    assert str(own_folder / ".scoring") in done.stderr

    # The batch job scored the date in place, into tables beside the source.
    scores = DeltaTable(str(own_folder / "lake" / "fraud_scores")).to_pandas()
    scores = scores[scores["ds"].astype(str) == DATE]
    assert len(scores) > 0 and scores["score"].between(0, 1).all()
    batch_score = dict(zip(scores["transaction_id"], scores["score"], strict=True))

    bootstrap = done.stdout.strip().splitlines()[-1].split("=", 1)[1]
    (stream_block,) = blocks("<!-- readme-own-data: runs until stopped -->")
    worker = subprocess.Popen(
        ["bash", "-c", "exec " + stream_block],
        cwd=own_folder,
        env={**user_env, "KAFKA_BOOTSTRAP_SERVERS": bootstrap},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        rows = transactions(3_000)
        rows = rows[rows["ds"].astype(str) == DATE].head(EVENTS)
        producer = KafkaProducer(bootstrap_servers=bootstrap)
        for record in json.loads(rows.to_json(orient="records", date_format="iso")):
            # Extra fields (the label, the date) ride along: the contract's are read.
            producer.send("transactions", json.dumps(record).encode())
        producer.send("transactions", b'{"transaction_id": "tx-bad", "amount": "lots"}')
        producer.flush()
        producer.close()

        # Read once the worker has made its topics, like the input (a reader's metadata
        # request would otherwise have the dev broker auto-create them).
        made = partitions_once_made(bootstrap, ("fraud_scores", "transactions_dlq"), worker)
        predictions = read_all(bootstrap, "fraud_scores", len(rows), 120, made["fraud_scores"])
        dead = read_all(bootstrap, "transactions_dlq", 1, 30, made["transactions_dlq"])
    finally:
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err[-4000:]

    live = {p["transaction_id"]: p["score"] for p in (json.loads(r.value) for r in predictions)}
    assert len(predictions) == len(rows) == len(live)
    assert live == {key: batch_score[key] for key in live}  # bit for bit
    assert [r.value for r in dead] == [b'{"transaction_id": "tx-bad", "amount": "lots"}']
    assert json.loads(out.strip().splitlines()[-1])["events_in"] == len(rows) + 1
