#!/usr/bin/env bash
# A local Airflow for this project, on loopback only: the UI/API server, the scheduler
# (LocalExecutor) and the DAG processor, in the environment of env.sh. Ctrl-C stops all.
#
#   make airflow && infra/airflow/local.sh      # then open http://127.0.0.1:8080
#
# Not `airflow standalone`: it also starts the scheduler's and triggerer's log servers,
# which listen on every interface. Here the scheduler serves no logs (the UI reads the
# task logs from $AIRFLOW_HOME/logs on this machine) and no triggerer runs (no DAG of the
# project defers). Login: user admin, password in
# $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated (written on first start).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
# shellcheck source=env.sh
source "$root/infra/airflow/env.sh"
airflow="$root/.venv-airflow/bin/airflow"
if [ ! -x "$airflow" ]; then
    echo "No Airflow in $root/.venv-airflow: run \`make airflow\` first." >&2
    exit 2
fi
export PATH="$root/.venv-airflow/bin:$PATH"

"$airflow" db migrate >/dev/null
pids=()
stop() {
    trap - INT TERM EXIT
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM EXIT
"$airflow" api-server --host "$AIRFLOW__API__HOST" --port "$AIRFLOW__API__PORT" &
pids+=($!)
"$airflow" scheduler --skip-serve-logs &
pids+=($!)
"$airflow" dag-processor &
pids+=($!)
echo "Airflow UI: http://$AIRFLOW__API__HOST:$AIRFLOW__API__PORT (AIRFLOW_HOME=$AIRFLOW_HOME)" >&2
wait -n "${pids[@]}"
