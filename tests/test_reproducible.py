"""Results that depend only on the config and the seed: each image's augmentation is a function of
(seed, epoch, index), whichever process loads it and wherever an epoch was interrupted."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from mitorch.data.dataset import ImageDataset
from mitorch.data.formats import load_index
from mitorch.data.presets import ClassificationTrainPreset
from mitorch.data.samplers import EpochSampler, SampleKey, sample_seed
from tests.helpers import make_text_dataset, run, validation_metrics


def _dataset(tmp_path: Path) -> ImageDataset:
    data = make_text_dataset(tmp_path / "data", num_train=8, num_val=2)
    return ImageDataset(load_index(str(data.train), multilabel=False), False,
                        ClassificationTrainPreset(16, auto_augment="trivialaugment"))


def test_an_images_augmentation_depends_on_its_seed_alone(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path)
    torch.manual_seed(1)
    random.seed(1)
    first, _ = dataset[SampleKey(3, 12345)]
    torch.manual_seed(2)  # another global state: the same key gives the same image
    random.seed(2)
    np.random.seed(2)
    state = torch.get_rng_state()
    second, _ = dataset[SampleKey(3, 12345)]
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    # The training's own generator is left where it was; random and NumPy are left seeded by
    # the image's seed (a function of the seed alone, like everything else).
    assert torch.equal(torch.get_rng_state(), state)
    after = random.random(), np.random.random()
    dataset[SampleKey(3, 12345)]
    assert (random.random(), np.random.random()) == after
    others = [dataset[SampleKey(3, seed)][0] for seed in range(6)]
    assert any(not torch.equal(other, first) for other in others)
    # A plain index (validation, prediction) draws from the global generator as before.
    torch.manual_seed(5)
    plain_a, _ = dataset[3]
    torch.manual_seed(5)
    plain_b, _ = dataset[3]
    torch.testing.assert_close(plain_a, plain_b, rtol=0, atol=0)


def test_each_ddp_rank_gets_the_keys_a_single_process_would() -> None:
    single = EpochSampler(10, shuffle=True, seed=7)
    single.set_epoch(3)
    whole = dict(single)
    assert sorted(whole) == list(range(10))
    assert all(seed == sample_seed(7, 3, i) for i, seed in whole.items())
    ranks = [EpochSampler(10, shuffle=True, seed=7, rank=r, world_size=3) for r in range(3)]
    for sampler in ranks:
        sampler.set_epoch(3)
    shares = [list(sampler) for sampler in ranks]
    assert sum(len(share) for share in shares) == 9  # cut to a multiple of the world size
    for share in shares:
        assert all(whole[key.index] == key.seed for key in share)
    # A resumed epoch (skip) continues with the same keys; the next epoch draws new seeds.
    single.set_epoch(3, skip=4)
    assert list(single) == list(whole.items())[4:]
    single.set_epoch(4)
    assert all(seed != whole[i] for i, seed in single)
    # Validation order: plain indices.
    assert list(EpochSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_loader_workers_do_not_change_the_result(tmp_path: Path) -> None:
    data = make_text_dataset(tmp_path / "data", num_train=48, num_val=12)
    common = [f"data.train={data.train}", f"data.val={data.val}", "image_size=32", "batch_size=8", "max_epochs=2",
              "deterministic=true", "augmentation=trivialaugment", "optimizer.lr=0.05"]
    results = {}
    for workers in (0, 2):
        result = run("mitrain", *common, f"data.num_workers={workers}", "-o", f"w{workers}.pt", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        results[workers] = validation_metrics(result.metrics)  # latencies differ from run to run
    assert results[2] == results[0]
    a = torch.load(tmp_path / "w0.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "w2.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)
