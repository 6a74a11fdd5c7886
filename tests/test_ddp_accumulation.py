"""DDP with gradient accumulation: gradients are all-reduced only on the batches that update."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_text_dataset

pytestmark = pytest.mark.slow

# Each process counts the backward passes whose gradients DDP all-reduced: a communication hook
# sees every bucket, and the last bucket once per synchronised backward.
_PROCESS = """
import sys
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
import mitorch.api as api
from mitorch.config import compose

synced = []

class Counting(DistributedDataParallel):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)

        def hook(state, bucket):
            if bucket.is_last():
                synced.append(1)
            future = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
            return future.then(lambda f: f.value()[0] / dist.get_world_size())

        self.register_comm_hook(None, hook)

api.DistributedDataParallel = Counting
api.train(compose(sys.argv[2:]), run_dir=sys.argv[1])
print("SYNCED", len(synced))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _synced_backwards(tmp_path: Path, accumulate: int) -> list[int]:
    data = make_text_dataset(tmp_path / "data", num_train=32, num_val=4)
    overrides = [f"data.train={data.train}", f"data.val={data.val}", "image_size=32", "batch_size=4",
                 "data.num_workers=0", "max_epochs=1", f"accumulate_grad_batches={accumulate}"]
    port = _free_port()
    processes = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        processes.append(subprocess.Popen([sys.executable, "-c", _PROCESS, str(tmp_path / f"run{accumulate}-{rank}"),
                                           *overrides], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    counts = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        counts.append(int(stdout.split("SYNCED")[-1].split()[0]))
    return counts


def test_accumulated_batches_are_all_reduced_only_when_the_weights_update(tmp_path: Path) -> None:
    # 32 images, 2 processes, batches of 4: 4 batches a process; accumulating 2, 2 updates.
    assert _synced_backwards(tmp_path, accumulate=2) == [2, 2]
    # 3 does not divide 4: the epoch's last batch updates too (batches 3 and 4).
    assert _synced_backwards(tmp_path, accumulate=3) == [2, 2]
