"""`num_processes=N`: start N local training processes, as torchrun would, and wait for them."""
from __future__ import annotations

import os
import signal
import socket
import threading
from typing import Any

import torch
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

from mitorch import errors


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, train: Any, args: tuple, results: Any) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if "OMP_NUM_THREADS" not in os.environ:
        # The processes share the machine's cores instead of each taking all of them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    try:
        metrics = train(*args)
    except errors.MiTorchError as e:
        results.put(("error", rank, type(e).__name__, str(e), getattr(e, "exit_code", 1)))
        raise SystemExit(1) from None
    if rank == 0:
        results.put(("metrics", metrics))


def run_local_processes(world_size: int, train: Any, *args: Any) -> dict[str, Any]:
    """Runs train(*args) in world_size spawned processes; returns rank 0's result.

    SIGTERM to this process goes on to every rank, which checkpoint and stop together. A
    rank that fails stops the others; its error is raised here (a MiTorchError keeps its
    type, one-line message and exit code).
    """
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    processes = mp.start_processes(_worker, args=(world_size, _free_port(), train, args, results),
                                   nprocs=world_size, join=False, start_method="spawn")

    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        received.append(signum)
        for process in processes.processes:
            if process.is_alive():
                os.kill(process.pid, signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, forward)
        # Ctrl-C reaches every process of the terminal's group already; do not send it twice.
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        while not processes.join(timeout=1):
            pass
    except ProcessException as e:
        _raise_reported_error(results)
        if received:
            name = signal.Signals(received[0]).name
            raise errors.Interrupted(f"stopped by {name} before training started; nothing to resume",
                                     128 + received[0]) from None
        raise errors.TrainingError(f"training process {e.error_index} failed (exit code "
                                   f"{getattr(e, 'exit_code', '?')}); see its output above") from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    while not results.empty():
        kind, *payload = results.get()
        if kind == "metrics":
            return payload[0]
    raise errors.TrainingError("the training processes ended without reporting metrics")


def _raise_reported_error(results: Any) -> None:
    """Raises the error a process reported: the main process's when it reported one (the others
    may only say that they stopped with it), else the first."""
    reported = []
    while not results.empty():
        kind, *payload = results.get()
        if kind == "error":
            reported.append(payload)
    if not reported:
        return
    _, name, message, exit_code = min(reported, key=lambda error: error[0] != 0)
    if name in ("Interrupted", "Stopped"):
        raise getattr(errors, name)(message, exit_code) from None
    raise getattr(errors, name, errors.MiTorchError)(message) from None
