"""The batch job as a file for spark-submit; ``scoring batch submit`` passes this path."""

import sys

from scoring.batch.main import main

if __name__ == "__main__":
    sys.exit(main())
