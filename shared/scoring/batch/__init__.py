"""The nightly path: the Spark job, its Spark session, and the Delta checks and reports."""
