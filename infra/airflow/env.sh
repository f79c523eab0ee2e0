# The environment every local Airflow command of this project runs in. Source it:
#
#   source infra/airflow/env.sh
#   .venv-airflow/bin/airflow dags test nightly_batch_scoring 2026-11-07
#
# Anything already set in the environment wins, so a test or a user can point it elsewhere
# (SCORING_HOME, AIRFLOW_HOME, AIRFLOW_CONN_SPARK_DEFAULT, any AIRFLOW_VAR_...). What it sets:
#   - AIRFLOW_HOME in the project's data dir ($SCORING_HOME/airflow), SQLite metadata DB,
#     dags_folder = this repository's airflow_dags/, no example DAGs;
#   - the API server (UI) on 127.0.0.1 only;
#   - connection spark_default: master local[2], spark-submit in client mode;
#   - the Airflow Variables the DAGs share (scoring_project_root, scoring_venv,
#     scoring_home); every other Variable has a default derived from these (see
#     airflow_dags/scoring_common.py);
#   - and it migrates that local SQLite metadata DB when it is new (or older than
#     .venv-airflow), so `airflow dags test` works right after sourcing this file.

_scoring_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/../.." && pwd)"

SCORING_HOME="${SCORING_HOME:-$_scoring_root/.scoring}"
mkdir -p "$SCORING_HOME"
SCORING_HOME="$(cd "$SCORING_HOME" && pwd)"
export SCORING_HOME

export AIRFLOW_HOME="${AIRFLOW_HOME:-$SCORING_HOME/airflow}"
mkdir -p "$AIRFLOW_HOME"
export AIRFLOW__CORE__DAGS_FOLDER="${AIRFLOW__CORE__DAGS_FOLDER:-$_scoring_root/airflow_dags}"
export AIRFLOW__CORE__LOAD_EXAMPLES="${AIRFLOW__CORE__LOAD_EXAMPLES:-False}"
_scoring_local_db="sqlite:///$AIRFLOW_HOME/airflow.db"
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-$_scoring_local_db}"
export AIRFLOW__CORE__EXECUTOR="${AIRFLOW__CORE__EXECUTOR:-LocalExecutor}"
# Two cores: more parallel tasks than that only slows each Spark job down.
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-2}"

# UI and task API on loopback; tasks reach the API at the same address.
export AIRFLOW__API__HOST="${AIRFLOW__API__HOST:-127.0.0.1}"
export AIRFLOW__API__PORT="${AIRFLOW__API__PORT:-8080}"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="${AIRFLOW__CORE__EXECUTION_API_SERVER_URL:-http://$AIRFLOW__API__HOST:$AIRFLOW__API__PORT/execution/}"

# spark-submit resolves to the project venv's (the DAG puts it first on the task's PATH).
if [ -z "${AIRFLOW_CONN_SPARK_DEFAULT:-}" ]; then
    export AIRFLOW_CONN_SPARK_DEFAULT='{"conn_type": "spark", "host": "local[2]", "extra": {"deploy-mode": "client", "spark-binary": "spark-submit"}}'
fi

export AIRFLOW_VAR_SCORING_PROJECT_ROOT="${AIRFLOW_VAR_SCORING_PROJECT_ROOT:-$_scoring_root}"
export AIRFLOW_VAR_SCORING_VENV="${AIRFLOW_VAR_SCORING_VENV:-$_scoring_root/.venv}"
export AIRFLOW_VAR_SCORING_HOME="${AIRFLOW_VAR_SCORING_HOME:-$SCORING_HOME}"

# Migrate the local metadata DB once: `airflow dags test` and the other commands refuse an
# unmigrated one. A DB configured elsewhere is left to its owner; a stamp newer than the
# Airflow venv says this one is done (`make airflow` after a version bump redoes it).
_scoring_airflow="$_scoring_root/.venv-airflow/bin/airflow"
_scoring_stamp="$AIRFLOW_HOME/.db-migrated"
if [ "$AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" = "$_scoring_local_db" ] && [ -x "$_scoring_airflow" ] &&
    { [ ! -f "$AIRFLOW_HOME/airflow.db" ] ||
        [ ! "$_scoring_stamp" -nt "$_scoring_root/.venv-airflow/.installed" ]; }; then
    echo "env.sh: migrating the Airflow metadata DB in $AIRFLOW_HOME (once)" >&2
    if "$_scoring_airflow" db migrate >"$AIRFLOW_HOME/db-migrate.log" 2>&1; then
        touch "$_scoring_stamp"
    else
        echo "env.sh: \`airflow db migrate\` failed; see $AIRFLOW_HOME/db-migrate.log" >&2
    fi
fi

unset _scoring_root _scoring_local_db _scoring_airflow _scoring_stamp
