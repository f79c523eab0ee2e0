#!/usr/bin/env bash
# Local Spark standalone cluster (1 master + 1 worker) on loopback, run from the
# pip-installed pyspark (no separate Spark download).
#
#   infra/spark/standalone.sh start|stop|status
#
# Env (defaults):
#   PYTHON=python3                 interpreter whose pyspark provides SPARK_HOME
#   SPARK_MASTER_PORT=7077  SPARK_MASTER_WEBUI_PORT=8080  SPARK_WORKER_WEBUI_PORT=8081
#   SPARK_WORKER_CORES=2    SPARK_WORKER_MEMORY=2g
#   SPARK_STATE_DIR=.scoring/spark (relative to cwd; pid files, logs, worker work dir)
#   SPARK_START_TIMEOUT=90         seconds to wait for master + registered worker
set -euo pipefail

PYTHON="${PYTHON:-python3}"
SPARK_HOME="$("$PYTHON" -c 'import pyspark,os;print(os.path.dirname(pyspark.__file__))')" ||
  { echo "ERROR: '$PYTHON' cannot import pyspark; set PYTHON=<venv>/bin/python" >&2; exit 1; }
MASTER_PORT="${SPARK_MASTER_PORT:-7077}"
MASTER_WEBUI_PORT="${SPARK_MASTER_WEBUI_PORT:-8080}"
WORKER_WEBUI_PORT="${SPARK_WORKER_WEBUI_PORT:-8081}"
WORKER_CORES="${SPARK_WORKER_CORES:-2}"
WORKER_MEMORY="${SPARK_WORKER_MEMORY:-2g}"
TIMEOUT="${SPARK_START_TIMEOUT:-90}"
mkdir -p "${SPARK_STATE_DIR:-.scoring/spark}"
STATE="$(cd "${SPARK_STATE_DIR:-.scoring/spark}" && pwd)"  # absolute: daemons outlive our cwd

MASTER_URL="spark://127.0.0.1:${MASTER_PORT}"
MASTER_JSON="http://127.0.0.1:${MASTER_WEBUI_PORT}/json/"
MASTER_CLASS=org.apache.spark.deploy.master.Master
WORKER_CLASS=org.apache.spark.deploy.worker.Worker

export SPARK_HOME
# Every RPC socket and web UI (master, worker, and the executors the worker forks,
# which inherit this env) binds loopback only; also stops the "hostname resolves
# to a loopback address, using <eth0 ip>" fallback.
export SPARK_LOCAL_IP=127.0.0.1
# Fail on a busy port instead of silently moving to port+1 (URL/UI would be wrong).
# No REST submission server (:6066): unused, unauthenticated, one more port to clash.
export SPARK_MASTER_OPTS="${SPARK_MASTER_OPTS:-} -Dspark.port.maxRetries=0 -Dspark.master.rest.enabled=false"
export SPARK_WORKER_OPTS="${SPARK_WORKER_OPTS:-} -Dspark.port.maxRetries=0"

# pid of a running daemon, only if the pid file points at that Spark class
# (guards against a stale pid file whose pid was reused by another process). -ww: the
# whole command line; ps cuts it at $COLUMNS otherwise, and the class comes last.
running_pid() {  # $1=name $2=class
  local pid args
  pid="$(cat "$STATE/$1.pid" 2>/dev/null)" && args="$(ps -ww -p "$pid" -o args= 2>/dev/null)" || return 1
  [[ "$args" == *"$2"* ]] && echo "$pid"
}

launch() {  # $1=name $2=class, rest = class args
  local name="$1" cls="$2"; shift 2
  running_pid "$name" "$cls" >/dev/null && return 0
  # spark-class ends with `exec java ...`, so $! is the JVM's pid.
  nohup "$SPARK_HOME/bin/spark-class" "$cls" "$@" >"$STATE/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE/$name.pid"
}

alive_workers() {  # prints the master's aliveworkers count, or nothing if it does not answer
  "$PYTHON" - "$MASTER_JSON" "$MASTER_URL" 2>/dev/null <<'EOF' || true
import json, sys, urllib.request
d = json.load(urllib.request.urlopen(sys.argv[1], timeout=2))
if d.get("url") == sys.argv[2]:   # make sure it is *our* master on that UI port
    print(d.get("aliveworkers", 0))
EOF
}

stop_one() {  # $1=name $2=class; TERM, then KILL after 15s
  local pid i
  if pid="$(running_pid "$1" "$2")"; then
    kill "$pid" 2>/dev/null || true
    for i in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$STATE/$1.pid"
}

start() {
  launch master "$MASTER_CLASS" --host 127.0.0.1 --port "$MASTER_PORT" --webui-port "$MASTER_WEBUI_PORT"
  # Work dir (executor logs, app files) in the state dir, not inside site-packages/pyspark/work.
  launch worker "$WORKER_CLASS" --host 127.0.0.1 --webui-port "$WORKER_WEBUI_PORT" \
    --cores "$WORKER_CORES" --memory "$WORKER_MEMORY" --work-dir "$STATE/work" "$MASTER_URL"
  local t0=$SECONDS n f
  until n="$(alive_workers)"; [ "${n:-0}" -ge 1 ]; do
    if (( SECONDS - t0 >= TIMEOUT )) || ! running_pid master "$MASTER_CLASS" >/dev/null \
        || ! running_pid worker "$WORKER_CLASS" >/dev/null; then
      local ui="does not answer as $MASTER_URL"; [ -n "$n" ] && ui="answers, alive workers: $n"
      echo "ERROR: Spark cluster not ready after $((SECONDS - t0))s (master UI $MASTER_JSON $ui)" >&2
      for f in master worker; do  # log tails without Java stack frames
        echo "--- $STATE/$f.log" >&2; grep -v $'^\tat ' "$STATE/$f.log" | tail -n 15 >&2 || true
      done
      stop
      exit 1
    fi
    sleep 1
  done
  echo "$MASTER_URL"
}

stop() {
  stop_one worker "$WORKER_CLASS"  # worker first: its shutdown hook kills its executors
  stop_one master "$MASTER_CLASS"
}

status() {
  local name cls pid rc=0 n
  for name in master worker; do
    [ "$name" = master ] && cls="$MASTER_CLASS" || cls="$WORKER_CLASS"
    if pid="$(running_pid "$name" "$cls")"; then echo "$name: running (pid $pid)"; else echo "$name: stopped"; rc=1; fi
  done
  n="$(alive_workers)"
  echo "master: $MASTER_URL  ui: http://127.0.0.1:$MASTER_WEBUI_PORT  alive workers: ${n:-unknown (UI not answering)}"
  return "$rc"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
