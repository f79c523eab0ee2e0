"""Score a Delta table with a registered model, in place, on any Spark master.

    spark-submit jobs/batch/score.py --model models:/fraud@champion \\
        --source /lake/transactions --target /lake/fraud_scores --date 2026-11-20

The jars and Delta settings must be on the command line: ``scoring batch submit`` adds
them, ``scoring batch spark-conf`` prints them. Options: ``--help``; the job itself is
``scoring.batch.main``.
"""

import sys

from scoring.batch.main import main

if __name__ == "__main__":
    sys.exit(main())
