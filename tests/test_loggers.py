"""The logger config group: what TensorBoard, MLflow and CSV hold after a training, read back with
their own readers; a missing library; only the main process logs."""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any

import pytest

import mitorch
from mitorch.engine import distributed
from mitorch.engine.progress import PlainProgress
from mitorch.errors import ConfigError
from tests.helpers import QUICK, make_text_dataset

# 16 images in batches of 8: 2 updates an epoch, 4 in all; validation after epoch 2 only.
STEPS_PER_EPOCH = 2
ALL_LOGGERS = ["logger=[tensorboard,csv,mlflow]", "max_epochs=2", "val_every_n_epochs=2", "log_every_n_steps=1"]


def _quiet() -> PlainProgress:
    return PlainProgress(stream=io.StringIO(), interval_s=1e9)


def _data(root: Path) -> list[str]:
    data = make_text_dataset(root, num_train=16, num_val=6)
    return [f"data.train={data.train}", f"data.val={data.val}", *QUICK]


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One training with all three loggers; MLFLOW_TRACKING_URI set, as AzureML sets it."""
    root = tmp_path_factory.mktemp("logged")
    env_store, config_store = root / "env_mlruns", root / "config_mlruns"
    records: list[dict[str, Any]] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", env_store.as_uri())
        patch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        patch.delenv("MLFLOW_RUN_ID", raising=False)
        cfg = mitorch.compose([*_data(root / "data"), *ALL_LOGGERS, f"output={root / 'weights.pt'}",
                               f"logger.mlflow.tracking_uri={config_store.as_uri()}"])
        final = mitorch.train(cfg, run_dir=root / "run", progress=_quiet(), epoch_callbacks=[records.append])
    return {"root": root, "run": root / "run", "final": final, "records": records, "env_store": env_store,
            "config_store": config_store}


def test_tensorboard_holds_steps_epochs_and_the_resolved_config(logged: dict[str, Any]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logged["run"] / "tensorboard"))
    events.Reload()
    losses = events.Scalars("train/loss")
    lrs = events.Scalars("train/lr")
    assert [e.step for e in losses] == [e.step for e in lrs] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    # Each step shows the lr its update used: the default one-epoch warmup (2 updates) rises linearly
    # towards optimizer.lr=0.05, then the cosine falls from 0.05 to 0.
    assert [e.value for e in lrs] == pytest.approx([0.05 / 3, 0.1 / 3, 0.05, 0.025])
    epoch_losses = events.Scalars("epoch/train_loss")
    assert [e.step for e in epoch_losses] == [1, 2]
    assert epoch_losses[0].value == pytest.approx(logged["records"][0]["train_loss"], rel=1e-5)
    accuracy = events.Scalars("val/top1_accuracy")
    assert [(e.step, e.value) for e in accuracy] == [(2, pytest.approx(logged["final"]["top1_accuracy"]))]
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "image_size: 32" in config and "lr: 0.05" in config


def test_csv_has_one_row_per_epoch_and_a_column_per_metric(logged: dict[str, Any]) -> None:
    with open(logged["run"] / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert {"train_loss", "lr", "images_per_s", "val/top1_accuracy", "val/loss", "val/num_samples"} <= set(rows[0])
    assert rows[0]["val/top1_accuracy"] == ""  # epoch 1 was not validated
    assert float(rows[1]["val/top1_accuracy"]) == pytest.approx(logged["final"]["top1_accuracy"])
    assert rows[1]["val/num_samples"] == "6"
    assert float(rows[0]["train_loss"]) == pytest.approx(logged["records"][0]["train_loss"])
    # metrics.jsonl is still written beside it.
    assert len((logged["run"] / "metrics.jsonl").read_text().splitlines()) == 2


def test_mlflow_run_holds_params_metrics_and_the_weights(logged: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    assert not logged["config_store"].exists(), "MLFLOW_TRACKING_URI wins over logger.mlflow.tracking_uri"
    client = MlflowClient(tracking_uri=logged["env_store"].as_uri())
    experiment = client.get_experiment_by_name("mitorch")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["optimizer.lr"] == "0.05" and params["image_size"] == "32" and params["max_epochs"] == "2"
    assert params["model._target_"] == "mitorch.models.resnet"
    history = client.get_metric_history(run.info.run_id, "val/top1_accuracy")
    assert [(m.step, m.value) for m in history] == [(2, pytest.approx(logged["final"]["top1_accuracy"]))]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["weights.pt"]


def test_several_loggers_and_unknown_ones_in_the_config() -> None:
    assert list(mitorch.compose(["logger=[csv,tensorboard]"]).logger) == ["csv", "tensorboard"]
    assert len(mitorch.compose([]).logger) == 0  # none by default
    with pytest.raises(ConfigError, match="unknown logger 'wandb'; choose from csv, mlflow, none, tensorboard"):
        mitorch.compose(["logger=wandb"])


@pytest.mark.parametrize("library", ["tensorboard", "mlflow"])
def test_a_missing_library_is_a_one_line_error_before_training(library: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, library, None)  # `import library` raises ImportError
    cfg = mitorch.compose([*_data(tmp_path / "data"), f"logger={library}"])
    with pytest.raises(ConfigError) as error:
        mitorch.train(cfg, run_dir=tmp_path / "run", progress=_quiet())
    message = str(error.value)
    assert "\n" not in message and f"pip install 'mitorch[{library}]'" in message
    assert not (tmp_path / "run").exists()


def test_only_the_main_process_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "from_environment", lambda: distributed.Distributed(rank=1))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    cfg = mitorch.compose([*_data(tmp_path / "data"), *ALL_LOGGERS, f"output={tmp_path / 'weights.pt'}"])
    records: list[dict[str, Any]] = []
    final = mitorch.train(cfg, run_dir=tmp_path / "run", progress=_quiet(), epoch_callbacks=[records.append])
    assert final["num_samples"] > 0 and records == []  # it trained, as a process of rank 1
    assert not (tmp_path / "run" / "tensorboard").exists()
    assert not (tmp_path / "run" / "metrics.csv").exists()
    assert not (tmp_path / "mlruns").exists()


def test_a_resumed_run_replaces_the_csv_rows_it_repeats(tmp_path: Path) -> None:
    from mitorch.engine.loggers import CSVLogger

    logger = CSVLogger(run_dir=tmp_path)
    logger.start({})
    for epoch in (1, 2):
        logger.log_epoch({"epoch": epoch, "train_loss": 1.0 / epoch, "lr": 0.1})
    resumed = CSVLogger(run_dir=tmp_path)
    resumed.start({})
    resumed.log_epoch({"epoch": 2, "train_loss": 0.25, "lr": 0.1, "val": {"top1_accuracy": 0.5}})
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["epoch"], r["train_loss"], r["val/top1_accuracy"]) for r in rows] == [("1", "1.0", ""),
                                                                                       ("2", "0.25", "0.5")]
