"""Executors run trainings: launch one, tell whether a run is still going, cancel one."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from abc import ABC, abstractmethod
from typing import Any

from mitorch.service.artifacts import training_dir


class Executor(ABC):
    """Where trainings run. `name` is recorded on each training it launches."""

    name: str
    capacity: int

    @abstractmethod
    def launch(self, training: dict[str, Any], gpu: int | None = None) -> str:
        """Starts `mitrain --training-id` for the training (on that GPU); returns the run id."""

    def free_gpu(self, busy: set[int]) -> int | None:
        """A GPU for the next launch that no running training uses; None: the executor decides."""
        return None

    @abstractmethod
    def state(self, run_id: str) -> str:
        """"running", "gone" (ended or lost), or "unknown" (cannot tell from here)."""

    @abstractmethod
    def cancel(self, run_id: str) -> None:
        """Asks the run to stop (it checkpoints first)."""


class LocalExecutor(Executor):
    """Processes on this machine that outlive the controller's tick, one GPU each where GPUs exist.

    Args:
        capacity: trainings at once; default $MITORCH_LOCAL_CAPACITY, else the number of GPUs, else 1.
    """

    name = "local"

    def __init__(self, capacity: int | None = None) -> None:
        self.gpus = _gpu_count()
        env_capacity = os.environ.get("MITORCH_LOCAL_CAPACITY")
        self.capacity = capacity or (int(env_capacity) if env_capacity else max(self.gpus, 1))
        self.host = socket.gethostname()

    def launch(self, training: dict[str, Any], gpu: int | None = None) -> str:
        folder = training_dir(training["id"])
        folder.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        with open(folder / "train.log", "ab") as log:
            process = subprocess.Popen([sys.executable, "-m", "mitorch.cli.mitrain", "--training-id", training["id"]],
                                       stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                       start_new_session=True)  # survives the controller's exit
        return f"local:{self.host}:{process.pid}"

    def free_gpu(self, busy: set[int]) -> int | None:
        """A GPU index no running training uses, or None without GPUs."""
        free = [g for g in range(self.gpus) if g not in busy]
        return free[0] if free else None

    def _pid(self, run_id: str) -> int | None:
        kind, host, pid = (run_id.split(":") + ["", "", ""])[:3]
        return int(pid) if kind == "local" and host == self.host and pid.isdigit() else None

    def state(self, run_id: str) -> str:
        pid = self._pid(run_id)
        if pid is None:
            return "unknown"
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                alive = b"--training-id" in f.read()
            with open(f"/proc/{pid}/stat", "rb") as f:
                alive = alive and f.read().split(b")")[-1].split()[0] != b"Z"  # a zombie has ended
        except OSError:
            alive = False
        if not alive:
            _reap(pid)
        return "running" if alive else "gone"

    def cancel(self, run_id: str) -> None:
        pid = self._pid(run_id)
        if pid is not None and self.state(run_id) == "running":
            os.kill(pid, signal.SIGTERM)


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
