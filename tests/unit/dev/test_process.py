"""Server process plumbing (scoring.dev.process), with small shell processes as servers."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from scoring.dev import process

# A "server" that ignores SIGTERM, and one that forks a worker into its process group.
STUBBORN = ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"]
FORKING = ["sh", "-c", "sleep 60 & echo $! > worker.pid; wait"]


def _spawn(tmp_path: Path, command: list[str]) -> int:
    return process.spawn(command, tmp_path, tmp_path / "server.pid", tmp_path / "server.log")


def _wait_for(path: Path) -> str:
    deadline = time.monotonic() + 10
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, f"{path} was not written"
        time.sleep(0.05)
    return path.read_text()


def test_spawn_records_the_pid_and_logs_output_then_stop_ends_it(tmp_path: Path) -> None:
    pid = _spawn(tmp_path, ["sh", "-c", "echo hello; sleep 60"])
    assert process.read_pid(tmp_path / "server.pid") == pid
    assert _wait_for(tmp_path / "server.log") == "hello\n"
    assert process.alive(pid)

    assert process.stop(pid, timeout=10) is True
    assert not process.alive(pid)
    process.forget(tmp_path / "server.pid")
    assert not (tmp_path / "server.pid").exists()


def test_stop_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    pid = _spawn(tmp_path, STUBBORN)
    _wait_for(tmp_path / "server.log")  # the trap is set
    began = time.monotonic()
    assert process.stop(pid, timeout=0.5) is True
    assert not process.alive(pid)
    assert time.monotonic() - began < 5


def test_stop_of_the_group_ends_the_forked_workers(tmp_path: Path) -> None:
    pid = _spawn(tmp_path, FORKING)
    worker = int(_wait_for(tmp_path / "worker.pid"))
    assert process.alive(worker)
    assert process.stop(pid, timeout=10, group=True) is True
    deadline = time.monotonic() + 5
    while process.alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process.alive(worker)


def test_kill_and_liveness_of_a_process_started_elsewhere(tmp_path: Path) -> None:
    # Not a child of this module: liveness comes from /proc, and a zombie is not alive.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert process.alive(other.pid)
        assert process.kill(other.pid) is True  # it stays a zombie until reaped below
        assert not process.alive(other.pid)
    finally:
        other.kill()
        other.wait()


def test_read_pid_of_a_missing_or_garbled_file_is_none(tmp_path: Path) -> None:
    assert process.read_pid(tmp_path / "absent.pid") is None
    (tmp_path / "bad.pid").write_text("not a pid\n")
    assert process.read_pid(tmp_path / "bad.pid") is None
    process.forget(tmp_path / "absent.pid")  # nothing to forget: no error


def test_started_here_until_forgotten(tmp_path: Path) -> None:
    pid = _spawn(tmp_path, ["sleep", "60"])
    assert process.started_here(pid)
    assert process.stop(pid, timeout=10)
    process.forget(tmp_path / "server.pid")
    assert not process.started_here(pid)
