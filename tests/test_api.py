"""mitorch.train / mitorch.evaluate in process: seeding, validation schedule, callbacks, progress."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

import mitorch
from mitorch.engine.progress import PlainProgress, RichProgress
from tests.conftest import QUICK, make_text_dataset


@pytest.fixture
def data_overrides(tmp_path: Path) -> list[str]:
    data = make_text_dataset(tmp_path / "data", num_train=16, num_val=6)
    return [f"data.train={data.train}", f"data.val={data.val}", *QUICK]


def _quiet() -> PlainProgress:
    return PlainProgress(stream=io.StringIO(), interval_s=1e9)


def test_same_seed_same_results_other_seed_other_results(data_overrides: list[str]) -> None:
    runs = [mitorch.train(mitorch.compose([*data_overrides, f"seed={seed}", "deterministic=true"]), progress=_quiet())
            for seed in (3, 3, 4)]
    assert runs[0] == runs[1]
    assert runs[0]["loss"] != runs[2]["loss"]


def test_validation_every_n_epochs_and_after_the_last(data_overrides: list[str], tmp_path: Path) -> None:
    records = []
    cfg = mitorch.compose([*data_overrides, "max_epochs=3", "val_every_n_epochs=2"])
    final = mitorch.train(cfg, run_dir=tmp_path / "run", progress=_quiet(), epoch_callbacks=[records.append])
    assert [("val" in r) for r in records] == [False, True, True]
    assert records[-1]["val"] == final
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged == json.loads(json.dumps(records))
    assert all(r["lr"] >= 0 and r["train_loss"] > 0 and r["duration_s"] > 0 for r in logged)


def test_evaluate_reproduces_the_final_metrics(data_overrides: list[str], tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    final = mitorch.train(mitorch.compose([*data_overrides, f"output={weights}"]), progress=_quiet())
    again = mitorch.evaluate(mitorch.compose([*data_overrides, f"weights={weights}"]))
    assert again == pytest.approx(final)
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
