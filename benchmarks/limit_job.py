"""Path (g) of benchmarks/batch.py: the whole-job limit on one machine, no checks.

delta-rs reads one date of the Delta table as Arrow batches, onnxruntime scores them on
``--threads`` threads (one intra-op thread per call, parallel across batches), delta-rs
writes key, date and score. No contract validation, no rejects, no lineage: the floor
any job on this stack can reach. The last stdout line is JSON with the job's own time
(from the model being loaded to the commit), measured like the batch job's ``seconds``.
Run by the benchmark; nothing else uses it.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="an artifact folder or models:/ URI")
    parser.add_argument("--source", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--date", required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake
    from scoring.batch import lake
    from scoring.lifecycle.loading import load_artifact

    scorer = load_artifact(args.model).scorer(1)
    started = time.monotonic()
    key = scorer.contract.key
    data = DeltaTable(args.source).to_pyarrow_dataset()
    batches = data.to_batches(
        columns=[key, "ds", *scorer.contract.feature_names],
        filter=lake.date_filter(data.schema, "ds", args.date),
        batch_size=65_536,
    )
    schema = pa.schema([data.schema.field(key), data.schema.field("ds"), ("score", pa.float64())])

    def score(batch: pa.RecordBatch) -> pa.RecordBatch:
        scores = pa.array(scorer.predict(batch))
        return pa.RecordBatch.from_arrays([batch[key], batch["ds"], scores], schema=schema)

    def scored() -> Iterator[pa.RecordBatch]:
        with ThreadPoolExecutor(args.threads) as pool:
            yield from pool.map(score, (b for b in batches if b.num_rows))

    write_deltalake(
        args.target, pa.RecordBatchReader.from_batches(schema, scored()), mode="overwrite"
    )
    print(json.dumps({"seconds": round(time.monotonic() - started, 3)}))


if __name__ == "__main__":
    main()
