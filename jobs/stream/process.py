"""Score every event of a Kafka topic with a registered model, exactly once.

    python jobs/stream/process.py --model models:/fraud@champion \\
        --input-topic transactions --output-topic fraud_scores --dlq-topic transactions_dlq

Same as ``scoring stream run``. Options: ``--help``; the processor itself is
``scoring.stream.main``.
"""

import sys

from scoring.stream.main import main

if __name__ == "__main__":
    sys.exit(main())
