"""The local executor: each attempt of a training is a process on this machine."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from mitorch.envvars import env_int
from mitorch.files.artifacts import attempt_dir, remote_root
from mitorch.service.executors.base import Executor, LaunchError, RunState, attempt_command


def local_host() -> str:
    """This machine's name as the service records it ($MITORCH_HOSTNAME, else the host name)."""
    return os.environ.get("MITORCH_HOSTNAME", "").strip() or socket.gethostname()


class LocalExecutor(Executor):
    """Processes on this machine that outlive the controller's tick, one GPU each where GPUs exist.

    Its identity is `local:<host>`, so controllers on several machines can share one database.
    state() says "running" or "gone" for a run of this machine (never "waiting": a process starts
    at launch) and "unknown" for one of another machine.

    Args:
        capacity: trainings at once; default $MITORCH_LOCAL_CAPACITY, else the number of GPUs, else 1.
    """

    def __init__(self, capacity: int | None = None) -> None:
        self.gpus = _gpu_count()
        self.capacity = capacity if capacity is not None else env_int("MITORCH_LOCAL_CAPACITY", max(self.gpus, 1),
                                                                      minimum=0)
        self.host = local_host()
        self.name = f"local:{self.host}"

    def launch(self, training: dict[str, Any], gpu: int | None = None) -> str:
        folder = attempt_dir(training["id"], training["attempt"])
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        python = os.environ.get("MITORCH_LOCAL_PYTHON", "").strip() or sys.executable
        command = attempt_command(python, training)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / "train.log", "ab") as log:
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           env=env, start_new_session=True)  # survives the controller's exit
        except OSError as e:
            raise LaunchError(f"cannot start {command[0]} in {folder}: {e.strerror or e}") from None
        return f"{self.name}:{process.pid}:{_start_time(process.pid) or ''}"

    def free_gpu(self, busy: set[int]) -> int | None:
        """A GPU index no running training uses, or None without GPUs."""
        free = [g for g in range(self.gpus) if g not in busy]
        return free[0] if free else None

    def _process(self, training: dict[str, Any]) -> tuple[int, str] | None:
        """(pid, start time or "") of the training's run on this machine; None when it is elsewhere."""
        run_id = training.get("run_id") or ""
        if run_id.startswith(self.name + ":"):
            pid, _, started = run_id[len(self.name) + 1:].partition(":")
            return (int(pid), started) if pid.isdigit() else None
        # A tick killed after launching, before it recorded the run: the process records itself.
        if not run_id and training.get("host") == self.host and isinstance(training.get("pid"), int):
            return training["pid"], ""
        return None

    def state(self, training: dict[str, Any]) -> RunState:
        process = self._process(training)
        if process is None:
            return "unknown"
        pid, started = process
        # The pid alone is not enough: after a reboot or a wrap-around it may be another process.
        expected = f"--training-id\0{training['id']}\0--attempt\0{training.get('attempt', 0)}\0".encode()
        try:
            alive = not _zombie(pid) and expected in _command_line(pid) + b"\0"
            alive = alive and (not started or _start_time(pid) == started)
        except OSError:
            alive = False
        if not alive:
            _reap(pid)
        return "running" if alive else "gone"

    def cancel(self, training: dict[str, Any], force: bool = False) -> bool:
        process = self._process(training)
        if process is None:
            return False  # not a process of this machine
        if self.state(training) != "running":
            return True
        try:
            if force:
                os.killpg(process[0], signal.SIGKILL)  # its data-loading workers too
            else:
                os.kill(process[0], signal.SIGTERM)
        except ProcessLookupError:
            pass
        except PermissionError:
            return False
        return True

    def check_ready(self) -> None:
        """Local processes write artifacts to a local folder or a Blob container; any other
        MITORCH_ARTIFACTS_URI is refused before a training is claimed."""
        remote_root()  # raises for a URI that is neither


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _command_line(pid: int) -> bytes:
    # Empty for a moment while a just-started process is still being set up by exec().
    for _ in range(20):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read()
        if command:
            return command
        time.sleep(0.05)
    return b""


def _zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"  # a zombie has ended


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _gpu_count() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listing.splitlines() if line.startswith("GPU "))
