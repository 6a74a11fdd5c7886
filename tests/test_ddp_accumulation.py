"""DDP with gradient accumulation: gradients are all-reduced only on the batches that update; a
main process whose epoch callback stops the run stops every process with it."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import make_text_dataset

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


# Rank 0's epoch callback stops the run after epoch 1 (on purpose, as a cancel does, or failing).
_STOPPING = """
import sys
import mitorch.api as api
from mitorch.config import compose
from mitorch.errors import Stopped

def stop(record):
    if sys.argv[2] == "on-purpose":
        raise Stopped(f"cancelled at the end of epoch {record['epoch']}", exit_code=3)
    raise RuntimeError("the store is gone")

try:
    api.train(compose(sys.argv[3:]), run_dir=sys.argv[1], epoch_callbacks=[stop])
except Exception as e:
    print(f"{type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(getattr(e, "exit_code", 1))
"""


@pytest.mark.parametrize("how", ["on-purpose", "failing"])
def test_the_main_process_stopping_at_an_epoch_end_stops_the_others_with_it(tmp_path: Path, how: str) -> None:
    data = make_text_dataset(tmp_path / "data", num_train=16, num_val=4)
    overrides = [f"data.train={data.train}", f"data.val={data.val}", "image_size=32", "batch_size=4",
                 "data.num_workers=0", "max_epochs=3"]
    port = _free_port()
    processes = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        processes.append(subprocess.Popen([sys.executable, "-c", _STOPPING, str(tmp_path / f"run-{rank}"), how,
                                           *overrides], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    err0, err1 = [process.communicate(timeout=300)[1] for process in processes]
    code0, code1 = [process.returncode for process in processes]
    if how == "on-purpose":
        assert (code0, code1) == (3, 3), (err0, err1)
        assert "Stopped: cancelled at the end of epoch 1" in err0
        assert "Stopped: the main process stopped the run at the end of epoch 1; process 1 stops with it" in err1
    else:
        assert (code0, code1) == (1, 1), (err0, err1)
        assert "RuntimeError: the store is gone" in err0
        assert ("TrainingError: the main process failed at the end of epoch 1 (its output says why); process 1 "
                "stops with it") in err1
