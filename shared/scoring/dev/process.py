"""Server processes that outlive the Python process that started them.

The local services (the Kafka broker, the S3 server, the MLflow server) are servers the
project starts for tests and development, bound to loopback. Each runs in its own session,
so it survives the command or test session that started it, with its pid and its log in
files of its state directory; any later process stops it through the pid file. This module
is that plumbing, in one place: starting a server, telling whether its pid is alive,
stopping it (SIGTERM, then SIGKILL) and forgetting it.

Children started by this process are remembered until :func:`forget`, so they are reaped
(``Popen.poll``) rather than left as zombies that would still look alive.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

__all__ = ["alive", "forget", "kill", "read_pid", "spawn", "started_here", "stop", "wait_exit"]

log = logging.getLogger(__name__)

# Seconds a process gets to exit after SIGKILL before it counts as surviving it.
_KILL_WAIT = 10.0

_children: dict[int, subprocess.Popen[bytes]] = {}


def spawn(
    command: list[str],
    cwd: Path,
    pid_file: Path,
    log_file: Path,
    env: dict[str, str] | None = None,
) -> int:
    """Start ``command`` in its own session, its output appended to ``log_file``.

    Args:
        command: The program and its arguments.
        cwd: Its working directory.
        pid_file: Written with the new pid.
        log_file: Receives its stdout and stderr.
        env: Its environment (default: this process's).

    Returns:
        The pid, which is also the id of its process group.
    """
    with log_file.open("ab") as out:
        child = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            # Its own session: no signal of this terminal reaches it, and its process
            # group holds whatever workers it forks.
            start_new_session=True,
        )
    _children[child.pid] = child
    pid_file.write_text(f"{child.pid}\n")
    return child.pid


def read_pid(pid_file: Path) -> int | None:
    """The pid recorded in ``pid_file``; None when it is missing or unreadable."""
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def started_here(pid: int) -> bool:
    """Whether ``pid`` is a child :func:`spawn` started in this process (not yet forgotten).

    Such a pid cannot have been recycled for another program: it stays ours until reaped.
    """
    return pid in _children


def alive(pid: int) -> bool:
    """Whether ``pid`` runs: not exited, and not a zombie waiting for its parent."""
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None  # also reaps it
    stat = Path(f"/proc/{pid}/stat")
    if stat.parent.is_dir():  # Linux: a zombie still answers kill 0
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``pid`` to exit; whether it did."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def stop(pid: int, timeout: float, group: bool = False) -> bool:
    """SIGTERM, then SIGKILL if ``pid`` is still running after ``timeout`` seconds.

    Args:
        pid: The process.
        timeout: Seconds it gets to shut down cleanly.
        group: Signal its whole process group (a server and the workers it forked).

    Returns:
        Whether it exited (False: it survived SIGKILL too).
    """
    _signal(pid, signal.SIGTERM, group)
    if wait_exit(pid, timeout):
        return True
    log.warning("pid %d ignored SIGTERM for %.0fs; killing it", pid, timeout)
    return kill(pid, group)


def kill(pid: int, group: bool = False) -> bool:
    """SIGKILL ``pid`` (or its process group), as a crash would; whether it exited."""
    _signal(pid, signal.SIGKILL, group)
    return wait_exit(pid, _KILL_WAIT)


def forget(pid_file: Path) -> None:
    """Delete ``pid_file`` and drop the child it names, once that process is gone."""
    pid = read_pid(pid_file)
    if pid is not None:
        _children.pop(pid, None)
    with contextlib.suppress(FileNotFoundError):
        pid_file.unlink()


def _signal(pid: int, sig: signal.Signals, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
