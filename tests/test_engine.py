"""The training loop: accumulation, clipping, non-finite losses, evaluation, weights files."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from mitorch import DataError, TrainingError
from mitorch.engine.progress import PlainProgress
from mitorch.engine.schedules import constant, cosine
from mitorch.engine.tasks import ClassificationTask
from mitorch.engine.trainer import Trainer, TrainerOptions, evaluate
from mitorch.models import resnet
from mitorch.models.weights import load_state, read_weights, save_weights


def _loader(batches: int, batch_size: int = 4, features: int = 6, classes: int = 3, scale: float = 1.0):
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(batch_size, features, generator=generator) * scale,
             torch.randint(0, classes, (batch_size,), generator=generator)) for _ in range(batches)]


def _trainer(model: nn.Module, lr: float = 0.1, **options) -> Trainer:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scheduler = constant(optimizer, steps_per_epoch=10, max_epochs=1)
    return Trainer(model, ClassificationTask(False, 3), optimizer, scheduler, torch.device("cpu"),
                   TrainerOptions(**{"max_epochs": 1, **options}), PlainProgress(interval_s=1e9))


def test_accumulation_steps_the_optimizer_once_per_n_batches() -> None:
    trainer = _trainer(nn.Linear(6, 3), accumulate_grad_batches=3, log_every_n_steps=1)
    trainer.fit(_loader(7), _loader(2))
    assert trainer.step == 3  # batches 3, 6 and the last one


def test_accumulated_gradient_equals_the_large_batch_gradient() -> None:
    torch.manual_seed(0)
    data = _loader(2, batch_size=4)
    big = [(torch.cat([data[0][0], data[1][0]]), torch.cat([data[0][1], data[1][1]]))]
    results = []
    for loader, accumulate in ((data, 2), (big, 1)):
        model = nn.Linear(6, 3)
        model.load_state_dict({"weight": torch.full((3, 6), 0.1), "bias": torch.zeros(3)})
        _trainer(model, accumulate_grad_batches=accumulate).fit(loader, _loader(1))
        results.append(model.weight.detach().clone())
    torch.testing.assert_close(results[0], results[1])


def test_gradient_clipping_bounds_the_update() -> None:
    model = nn.Linear(6, 3)
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    _trainer(model, lr=1.0, gradient_clip_norm=0.01).fit(_loader(1, scale=100.0), _loader(1))
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm() <= 0.01 + 1e-6


def _lrs(scheduler: torch.optim.lr_scheduler.LRScheduler, updates: int) -> list[float]:
    lrs = []
    for _ in range(updates):
        lrs.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


def test_warmup_in_updates_adds_to_warmup_in_epochs() -> None:
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    lrs = _lrs(constant(optimizer, steps_per_epoch=4, max_epochs=3, warmup_steps=3), 5)
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    lrs = _lrs(cosine(optimizer, steps_per_epoch=4, max_epochs=3, warmup_epochs=0.5, warmup_steps=3), 12)
    assert lrs[:6] == sorted(lrs[:6]) and lrs[5] == 1.0  # 2 + 3 updates of warmup, then the peak
    assert lrs[6:] == sorted(lrs[6:], reverse=True) and lrs[-1] < 0.1
    with pytest.raises(ValueError, match="warmup_steps must be 0 or more, got -1"):
        constant(optimizer, steps_per_epoch=4, max_epochs=1, warmup_steps=-1)


def test_a_warmup_takes_at_most_half_of_the_run() -> None:
    # The default one-epoch warmup in a one-epoch run: two of four updates, then the decay.
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    assert _lrs(cosine(optimizer, steps_per_epoch=4, max_epochs=1, warmup_epochs=1), 4) == pytest.approx(
        [1 / 3, 2 / 3, 1.0, 0.5])
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    assert _lrs(constant(optimizer, steps_per_epoch=2, max_epochs=2, warmup_steps=10), 4) == pytest.approx(
        [1 / 3, 2 / 3, 1.0, 1.0])


def test_non_finite_loss_names_epoch_and_step() -> None:
    loader = _loader(6)
    loader[3] = (torch.full((4, 6), float("nan")), loader[3][1])
    with pytest.raises(TrainingError, match=r"loss is nan at epoch 1, step 4 of 6"):
        _trainer(nn.Linear(6, 3), log_every_n_steps=5).fit(loader, _loader(1))


def test_evaluation_counts_every_image_once_and_averages_the_loss() -> None:
    model = nn.Linear(6, 3)
    batches = _loader(3, batch_size=5) + [(torch.randn(2, 6), torch.tensor([0, 1]))]
    metrics = evaluate(model, batches, ClassificationTask(False, 3), torch.device("cpu"))
    assert metrics["num_samples"] == 17
    inputs = torch.cat([x for x, _ in batches])
    targets = torch.cat([y for _, y in batches])
    with torch.no_grad():
        logits = model(inputs)
    assert metrics["loss"] == pytest.approx(nn.functional.cross_entropy(logits, targets).item(), rel=1e-5)
    assert metrics["top1_accuracy"] == pytest.approx((logits.argmax(1) == targets).float().mean().item())
    assert metrics["top5_accuracy"] == 1.0  # top-5 of 3 classes
    assert set(metrics) == {"top1_accuracy", "top5_accuracy", "average_precision", "loss", "num_samples"}


def test_multilabel_metrics() -> None:
    task = ClassificationTask(True, 2)
    logits = torch.tensor([[5.0, -5.0], [5.0, 5.0], [-5.0, -5.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    metrics = evaluate(nn.Identity(), [(logits, targets)], task, torch.device("cpu"))
    assert metrics["accuracy_50"] == pytest.approx(4 / 6)
    assert set(metrics) == {"accuracy_50", "average_precision", "loss", "num_samples"}


def test_empty_loaders_are_errors() -> None:
    with pytest.raises(DataError, match="validation set yields no images"):
        evaluate(nn.Linear(6, 3), [], ClassificationTask(False, 3), torch.device("cpu"))


def test_weights_round_trip_with_class_names_and_config(tmp_path: Path) -> None:
    model = resnet(num_classes=4)
    save_weights(tmp_path / "w.pt", model, ["a", "b", "c", "d"], "multiclass_classification", {"batch_size": 3})
    content = torch.load(tmp_path / "w.pt", weights_only=True)
    assert content["class_names"] == ["a", "b", "c", "d"] and content["config"] == {"batch_size": 3}
    state, metadata = read_weights(tmp_path / "w.pt")
    fresh = resnet(num_classes=4)
    assert load_state(fresh, state, "w.pt", replace_head=False) is False
    torch.testing.assert_close(fresh.fc.weight, model.fc.weight)


def test_torchvision_state_dict_loads_with_a_new_head(tmp_path: Path) -> None:
    reference = torchvision.models.resnet18()  # 1000 classes, like a downloaded checkpoint
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    state, metadata = read_weights(tmp_path / "resnet18.pth")
    assert metadata == {}
    model = resnet(num_classes=5)
    assert load_state(model, state, "resnet18.pth", replace_head=True) is True
    torch.testing.assert_close(model.conv1.weight, reference.conv1.weight)
    assert model.fc.weight.shape == (5, 512)
    with pytest.raises(DataError, match=r"fc\.(weight|bias) has shape"):
        load_state(resnet(num_classes=5), state, "resnet18.pth", replace_head=False)


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), tmp_path / "m.pth")
    state, _ = read_weights(tmp_path / "m.pth")
    with pytest.raises(DataError, match="do not fit the model"):
        load_state(resnet(num_classes=5), state, "m.pth", replace_head=True)
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    with pytest.raises(DataError, match="junk.pt cannot be loaded"):
        read_weights(tmp_path / "junk.pt")


def test_the_local_launcher_raises_the_main_processs_error_first() -> None:
    import queue

    from mitorch.engine.launch import _raise_reported_error
    from mitorch.errors import Stopped

    reported = queue.Queue()
    reported.put(("error", 1, "TrainingError", "the main process failed at the end of epoch 1", 1))
    reported.put(("error", 0, "DataError", "image a.png is corrupt", 1))
    with pytest.raises(DataError, match="a.png is corrupt"):
        _raise_reported_error(reported)
    reported.put(("error", 1, "Stopped", "the main process stopped the run", 75))
    with pytest.raises(Stopped) as stopped:
        _raise_reported_error(reported)
    assert stopped.value.exit_code == 75


def test_cost_metrics_of_a_model_whose_costs_are_known() -> None:
    from mitorch.engine.costs import measure_costs

    # 3x3 convolution, 3 -> 4 channels on 8x8 (padding 1): 8*8 * 4 * 3*3*3 MACs; then 256 -> 2.
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 2)).train()
    costs = measure_costs(model, image_size=8, batch_size=5, device=torch.device("cpu"), detection=False)
    assert costs["macs"] == 8 * 8 * 4 * 27 + 256 * 2
    assert costs["num_parameters"] == (4 * 27 + 4) + (256 * 2 + 2)
    assert costs["weights_mb"] == round(((4 * 27 + 4) + (256 * 2 + 2)) * 4 / 1e6, 3)
    assert costs["latency_ms_b1"] > 0 and costs["latency_ms_batch"] > 0
    assert model.training  # left as it was found
