"""`num_processes=N`: start N local training processes, as torchrun would, and wait for them."""
from __future__ import annotations

import os
import socket
from typing import Any

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
    try:
        metrics = train(*args)
    except errors.MiTorchError as e:
        results.put(("error", type(e).__name__, str(e)))
        raise SystemExit(1) from None
    if rank == 0:
        results.put(("metrics", metrics))


def run_local_processes(world_size: int, train: Any, *args: Any) -> dict[str, Any]:
    """Runs train(*args) in world_size spawned processes; returns rank 0's result.

    A process that fails stops the others; its error is raised here (a MiTorchError keeps
    its type and one-line message).
    """
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    try:
        mp.start_processes(_worker, args=(world_size, _free_port(), train, args, results), nprocs=world_size,
                           join=True, start_method="spawn")
    except ProcessException as e:
        while not results.empty():
            kind, *payload = results.get()
            if kind == "error":
                name, message = payload
                raise getattr(errors, name, errors.MiTorchError)(message) from None
        raise errors.TrainingError(f"training process {e.error_index} failed (exit code "
                                   f"{getattr(e, 'exit_code', '?')}); see its output above") from None
    while not results.empty():
        kind, *payload = results.get()
        if kind == "metrics":
            return payload[0]
    raise errors.TrainingError("the training processes ended without reporting metrics")
