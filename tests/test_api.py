"""mitorch.train / mitorch.evaluate in process: seeding, validation schedule, callbacks, progress."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest

import mitorch
from mitorch.engine.progress import PlainProgress, RichProgress
from tests.helpers import QUICK, make_text_dataset, validation_metrics


@pytest.fixture
def data_overrides(tmp_path: Path) -> list[str]:
    data = make_text_dataset(tmp_path / "data", num_train=16, num_val=6)
    return [f"data.train={data.train}", f"data.val={data.val}", *QUICK]


def _quiet() -> PlainProgress:
    return PlainProgress(stream=io.StringIO(), interval_s=1e9)


def test_same_seed_same_results_other_seed_other_results(data_overrides: list[str]) -> None:
    runs = [mitorch.train(mitorch.compose([*data_overrides, f"seed={seed}", "deterministic=true"]), progress=_quiet())
            for seed in (3, 3, 4)]
    assert validation_metrics(runs[0]) == validation_metrics(runs[1])
    assert runs[0]["loss"] != runs[2]["loss"]


def test_validation_every_n_epochs_and_after_the_last(data_overrides: list[str], tmp_path: Path) -> None:
    records = []
    cfg = mitorch.compose([*data_overrides, "max_epochs=3", "val_every_n_epochs=2"])
    final = mitorch.train(cfg, run_dir=tmp_path / "run", progress=_quiet(), epoch_callbacks=[records.append])
    assert [("val" in r) for r in records] == [False, True, True]
    assert records[-1]["val"] == validation_metrics(final)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged == json.loads(json.dumps(records))
    assert all(r["train_loss"] > 0 and r["duration_s"] > 0 for r in logged)
    # The default schedule over 3 epochs of 2 updates (16 images, batch_size=8): a one-epoch warmup to
    # optimizer.lr=0.05, then cosine to 0 over the other 4 updates. An epoch's lr is the one its next
    # update would use: after the warmup 0.05, then 0.05 * (1 + cos(pi * (updates_done - 2) / 4)) / 2.
    assert [r["lr"] for r in logged] == pytest.approx([0.05, 0.025, 0.0], abs=1e-9)


@pytest.fixture
def used_lrs() -> list[list[float]]:
    """The lr of every parameter group at each optimizer update, read just before the step."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    lrs: list[list[float]] = []
    handle = register_optimizer_step_pre_hook(lambda optimizer, args, kwargs:
                                              lrs.append([group["lr"] for group in optimizer.param_groups]))
    yield lrs
    handle.remove()


# The lr of each update, as a fraction of optimizer.lr, for warmup_epochs=1, max_epochs=2 and 4 batches an
# epoch (16 images, batch_size=4). Warmup climbs over the first epoch's updates and reaches the base lr at
# the first update of the second epoch; the cosine then falls to 0, where it stands after the last update.
_COSINE_AFTER_ONE_WARMUP_EPOCH = {
    1: [1 / 5, 2 / 5, 3 / 5, 4 / 5, 1.0, (1 + math.sqrt(0.5)) / 2, 0.5, (1 - math.sqrt(0.5)) / 2],  # 4 updates an epoch
    3: [1 / 3, 2 / 3, 1.0, 0.5],  # batches 3 and 4 (the epoch's last) update: 2 updates an epoch
}


@pytest.mark.parametrize("accumulate", sorted(_COSINE_AFTER_ONE_WARMUP_EPOCH))
def test_the_lr_schedule_counts_optimizer_updates(data_overrides: list[str], used_lrs: list[list[float]],
                                                  accumulate: int) -> None:
    records: list[dict] = []
    cfg = mitorch.compose([*data_overrides, "batch_size=4", "max_epochs=2", "optimizer.lr=0.01",
                           "lr_scheduler=cosine", "lr_scheduler.warmup_epochs=1", "lr_scheduler.min_lr_ratio=0",
                           f"accumulate_grad_batches={accumulate}"])
    mitorch.train(cfg, progress=_quiet(), epoch_callbacks=[records.append])
    expected = [0.01 * fraction for fraction in _COSINE_AFTER_ONE_WARMUP_EPOCH[accumulate]]
    assert [lrs[0] for lrs in used_lrs] == pytest.approx(expected, rel=1e-6)
    assert all(len(set(lrs)) == 1 for lrs in used_lrs)  # biases and norms follow the same schedule
    assert [r["lr"] for r in records] == pytest.approx([0.01, 0.0], abs=1e-12)


def test_ema_is_the_running_average_of_the_weights_after_each_update(data_overrides: list[str], tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from mitorch import build

    decay = 0.8
    models: list[torch.nn.Module] = []
    initial: dict[str, torch.Tensor] = {}
    expected: dict[str, torch.Tensor] = {}
    build_model = build.build_model

    def build_and_keep(cfg, num_classes: int) -> torch.nn.Module:
        model = build_model(cfg, num_classes)
        models.append(model)
        initial.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return model

    def average_by_hand(optimizer, args, kwargs) -> None:
        # The first update's weights, then decay * average + (1 - decay) * the weights after each update.
        for key, value in models[0].state_dict().items():
            if value.is_floating_point():
                value = value.detach().clone()
                expected[key] = torch.lerp(expected[key], value, 1 - decay) if key in expected else value

    monkeypatch.setattr(build, "build_model", build_and_keep)
    weights = tmp_path / "ema.pt"
    # 2 epochs of 2 updates, at an lr that trains without diverging (the default 0.1 does not, here).
    cfg = mitorch.compose([*data_overrides, "max_epochs=2", "optimizer.lr=0.01", f"ema_decay={decay}",
                           f"output={weights}"])
    handle = register_optimizer_step_post_hook(average_by_hand)
    try:
        final = mitorch.train(cfg, run_dir=tmp_path / "run", progress=_quiet())
    finally:
        handle.remove()
    monkeypatch.undo()

    saved = torch.load(weights, weights_only=True)["model"]
    raw = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    assert len(models) == 1 and expected.keys() >= {"fc.weight", "bn1.running_mean"}
    for key, value in expected.items():
        torch.testing.assert_close(saved[key], value, msg=lambda message: f"{key}: {message}")
    # The average has moved off the initial weights, yet lags behind the trained ones.
    assert not torch.allclose(saved["fc.weight"], initial["fc.weight"])
    assert not torch.allclose(saved["fc.weight"], raw["fc.weight"])
    assert final["averaging"] == "ema"
    again = mitorch.evaluate(mitorch.compose([*data_overrides, f"weights={weights}"]))
    assert again == pytest.approx(validation_metrics(final))


def test_evaluate_reproduces_the_final_metrics(data_overrides: list[str], tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    final = mitorch.train(mitorch.compose([*data_overrides, f"output={weights}"]), progress=_quiet())
    again = mitorch.evaluate(mitorch.compose([*data_overrides, f"weights={weights}"]))
    assert again == pytest.approx(validation_metrics(final))
    with pytest.raises(mitorch.ConfigError, match="set task_type=multiclass_classification"):
        mitorch.evaluate(mitorch.compose([*data_overrides, f"weights={weights}",
                                          "task_type=multilabel_classification"]))


def test_rich_progress_on_a_terminal(data_overrides: list[str]) -> None:
    stream = io.StringIO()
    mitorch.train(mitorch.compose(data_overrides), progress=RichProgress(stream=stream))
    text = stream.getvalue()
    assert "epoch 1/1" in text and "top1_accuracy" in text


def test_plain_progress_lines(data_overrides: list[str]) -> None:
    stream = io.StringIO()
    mitorch.train(mitorch.compose([*data_overrides, "log_every_n_steps=1"]),
                  progress=PlainProgress(stream=stream, interval_s=0.0))
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("epoch 1/1 batch 1/2 loss ") and "img/s" in lines[0]
    assert lines[-1].startswith("epoch 1/1 done: train_loss ")


def test_speed_options(data_overrides: list[str], tmp_path: Path) -> None:
    import torch

    options = ["channels_last=true", "data.num_workers=1", "data.persistent_workers=true", "data.prefetch_factor=4",
               "max_epochs=2", f"output={tmp_path / 'w.pt'}"]
    metrics = mitorch.train(mitorch.compose([*data_overrides, *options]), progress=_quiet())
    assert metrics["num_samples"] == 6
    conv = torch.load(tmp_path / "w.pt", weights_only=True)["model"]["conv1.weight"]
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


def test_compiled_forward_model_trains_and_saves_plain_keys(tmp_path: Path) -> None:
    import torch
    from torch import nn

    from mitorch.engine.schedules import constant
    from mitorch.engine.tasks import ClassificationTask
    from mitorch.engine.trainer import Trainer, TrainerOptions

    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(torch.randn(4, 6), torch.randint(0, 3, (4,))) for _ in range(3)]
    trainer = Trainer(model, ClassificationTask(False, 3), optimizer, constant(optimizer, 3, 1), torch.device("cpu"),
                      TrainerOptions(max_epochs=1, checkpoint_path=tmp_path / "last.pt"), _quiet(),
                      forward_model=torch.compile(model, backend="eager"))
    before = model[0].weight.detach().clone()
    trainer.fit(batches, batches)
    assert not torch.equal(before, model[0].weight)
    assert set(torch.load(tmp_path / "last.pt", weights_only=True)["model"]) == set(model.state_dict())


def test_a_checkpoint_dir_that_cannot_be_a_folder_fails_before_training(data_overrides: list[str],
                                                                       tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file")
    epochs: list[dict] = []
    for where in (tmp_path / "taken", tmp_path / "taken" / "below"):
        cfg = mitorch.compose([*data_overrides, f"checkpoint_dir={where}"])
        with pytest.raises(mitorch.ConfigError, match="is a file, not a folder"):
            mitorch.train(cfg, run_dir=tmp_path / "run", epoch_callbacks=[epochs.append])
    assert epochs == [] and not (tmp_path / "run").exists()


def test_a_training_reports_what_its_model_costs_to_run_unless_told_not_to(data_overrides: list[str]) -> None:
    from mitorch.engine.costs import COST_METRICS

    final = mitorch.train(mitorch.compose([*data_overrides, "model=mobilenet_v3"]), progress=_quiet())
    costs = {key: final[key] for key in COST_METRICS}
    model = mitorch.build.build_model(mitorch.compose([*data_overrides, "model=mobilenet_v3"]), num_classes=3)
    assert costs["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert costs["macs"] > 0 and 0 < costs["latency_ms_b1"] and 0 < costs["latency_ms_batch"]
    skipped = mitorch.train(mitorch.compose([*data_overrides, "cost_metrics=false"]), progress=_quiet())
    assert not set(COST_METRICS) & set(skipped)


def test_a_run_stopped_between_its_checkpoint_and_its_callbacks_hands_the_epoch_over_on_resume(
        data_overrides: list[str], tmp_path: Path) -> None:
    # The last epoch's checkpoint is written before the epoch callbacks run (a queued training's
    # callback writes the epoch to the store). A process that dies in between leaves a checkpoint
    # past the last recorded epoch: the resumed run must hand that epoch over, and, with nothing
    # left to train, still return the final validation.
    cfg = mitorch.compose([*data_overrides, "max_epochs=2", "cost_metrics=false"])
    seen: list[dict] = []

    def dies_at_the_last_epoch(record: dict) -> None:
        if record["epoch"] == 2:
            raise RuntimeError("the process dies here")
        seen.append(record)

    with pytest.raises(RuntimeError, match="dies here"):
        mitorch.train(cfg, run_dir=tmp_path / "run", progress=_quiet(), epoch_callbacks=[dies_at_the_last_epoch])
    assert [r["epoch"] for r in seen] == [1]
    replayed: list[dict] = []
    final = mitorch.train(cfg, run_dir=tmp_path / "run", progress=_quiet(), epoch_callbacks=[replayed.append])
    assert [r["epoch"] for r in replayed] == [2]
    assert final and final == replayed[0]["val"]
    assert final["num_samples"] == 6
