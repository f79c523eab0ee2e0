# Two commands do all the set-up on a fresh machine (Python 3.11, Java 17, Maven):
#   make demo   package a model, register it, score a Delta table (one process, no JVM), then live on Kafka
#   make test   the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JARS_STAMP := infra/jars/.resolved
KAFKA_JARS_STAMP := infra/kafka/jars/.resolved
AIRFLOW_VENV := .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed
WHEELS := build/wheels
WHEELS_STAMP := $(WHEELS)/.downloaded

.PHONY: demo test unit explore integration jars kafka-jars venv airflow lint bench bench-stream bench-serve cluster-up cluster-down clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The executors' packages as wheels, so packing their environment needs no index later
# (the tests run offline once set up).
$(WHEELS_STAMP): $(STAMP)
	$(PY) -c 'import pathlib, scoring.batch.pyenv as e; e.download_wheels(pathlib.Path("$(WHEELS)"))'
	touch $@

# JVM jars (Delta Lake) resolved once by Maven; Spark never downloads anything at run time.
$(JARS_STAMP): infra/pom.xml
	mvn -q -B -f infra/pom.xml package
	touch $@

# Kafka broker jars (KRaft, for tests and local dev; shared/scoring/dev/kafka_broker.py starts it).
$(KAFKA_JARS_STAMP): infra/kafka/pom.xml
	mvn -q -B -f infra/kafka/pom.xml package
	touch $@

# Airflow in its own venv (its croniter>=6.2 clashes with faust-streaming's <6); the
# project is not installed there: DAG tasks call the project venv's CLI and spark-submit.
$(AIRFLOW_STAMP): infra/airflow/requirements.txt infra/airflow/constraints.txt
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install -q --upgrade pip
	$(AIRFLOW_VENV)/bin/python -m pip install -q -r infra/airflow/requirements.txt \
		-c infra/airflow/constraints.txt
	touch $@

venv: $(STAMP) $(WHEELS_STAMP)
jars: $(JARS_STAMP)
kafka-jars: $(KAFKA_JARS_STAMP)
airflow: $(AIRFLOW_STAMP)

# The demo's batch job runs on the embedded arrow engine: no Spark jars needed.
demo: venv kafka-jars
	$(VENV)/bin/scoring demo

# Two workers, a test file each at a time (each worker starts its own Spark, broker and
# servers): most integration tests wait on other processes, so two halve the wait.
# The 15 slowest tests are listed at the end, to keep an eye on the suite's time.
TEST_WORKERS ?= 2
test: venv jars kafka-jars airflow
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15

unit: venv
	$(PY) -m pytest tests/unit

# Many more, random hypothesis examples than the suite's fixed ones (tests/conftest.py).
explore: venv
	HYPOTHESIS_PROFILE=explore $(PY) -m pytest tests/unit -p no:cacheprovider

integration: venv jars kafka-jars airflow
	$(PY) -m pytest tests/integration

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: venv jars
	$(PY) benchmarks/batch.py

bench-stream: venv kafka-jars
	$(PY) benchmarks/stream.py

bench-serve: venv
	$(PY) benchmarks/serve.py

cluster-up: venv
	PYTHON=$(PY) infra/spark/standalone.sh start

cluster-down:
	PYTHON=$(PY) infra/spark/standalone.sh stop

clean:
	rm -rf $(VENV) .venv-airflow infra/jars infra/kafka/jars infra/target .scoring
