"""Process groups from the standard environment (torchrun, AzureML) and small collectives."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    """This process's place in a run: RANK of WORLD_SIZE, LOCAL_RANK on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: str | None) -> torch.device:
        """The device of this process: cuda:LOCAL_RANK when distributed on GPUs."""
        if requested is None and torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        device = torch.device(requested or "cpu")
        if device.type == "cuda" and device.index is None and self.enabled:
            return torch.device("cuda", self.local_rank)
        return device

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether any process has flag set (every process must call it)."""
        if not self.enabled:
            return flag
        return bool(self.all_sum(torch.tensor([int(flag)], device=device)).item())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def from_environment() -> Distributed:
    """Reads RANK, WORLD_SIZE and LOCAL_RANK as torchrun and AzureML's PyTorch distribution set them."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return Distributed(rank, world_size, int(os.environ.get("LOCAL_RANK", str(rank))))


def start(context: Distributed, device: torch.device) -> None:
    """Joins the process group (NCCL on GPUs, gloo on CPU); MASTER_ADDR/MASTER_PORT say where."""
    if not context.enabled or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=context.rank,
                            world_size=context.world_size)


def stop() -> None:
    """Leaves the process group. Best effort: when another process has already gone (it stopped
    the run, or failed), tearing down may fail too, and must not hide why this one stops."""
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - the process is ending; its own error says why
            pass
