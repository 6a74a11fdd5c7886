"""Experiment loggers (the config group `logger`): TensorBoard, MLflow and CSV, several at once.

Only the main process builds loggers. Each imports its library when it is built, so a missing one
is a one-line error before training starts, and nothing here imports it at module level.

What a logger receives:
- start(config): once, before the first update, with the resolved config as plain containers;
- log_step(step, values): every log_every_n_steps updates, {"loss": mean loss of the batches
  since the previous call, "lr": the lr of update `step`} (step counts updates from 1);
- log_epoch(record): each epoch's record (epoch, train_loss, lr, duration_s, images_per_s and, on
  validated epochs, val: {metric: value});
- log_weights(path): the saved weights file (output=), after the last epoch;
- close(status): "completed", "interrupted" or "failed".
"""
from __future__ import annotations

import csv
import importlib
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from mitorch.errors import ConfigError, Interrupted


class Logger:
    """A logger that logs nothing; subclasses override what they record."""

    def start(self, config: dict[str, Any]) -> None:
        pass

    def log_step(self, step: int, values: dict[str, float]) -> None:
        pass

    def log_epoch(self, record: dict[str, Any]) -> None:
        pass

    def log_weights(self, path: Path) -> None:
        pass

    def close(self, status: str) -> None:
        pass


class Loggers(Logger):
    """Several loggers as one; a context manager that closes them with the run's outcome."""

    def __init__(self, loggers: list[Logger] | None = None) -> None:
        self.loggers = list(loggers or [])

    def __len__(self) -> int:
        return len(self.loggers)

    def start(self, config: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.start(config)

    def log_step(self, step: int, values: dict[str, float]) -> None:
        for logger in self.loggers:
            logger.log_step(step, values)

    def log_epoch(self, record: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_epoch(record)

    def log_weights(self, path: Path) -> None:
        for logger in self.loggers:
            logger.log_weights(path)

    def close(self, status: str) -> None:
        for logger in self.loggers:
            logger.close(status)

    def __enter__(self) -> Loggers:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any) -> None:
        interrupted = kind is not None and issubclass(kind, (Interrupted, KeyboardInterrupt))
        self.close("completed" if kind is None else "interrupted" if interrupted else "failed")


def epoch_values(record: dict[str, Any]) -> dict[str, int | float]:
    """The numbers of an epoch record, flat: train_loss, lr, ..., val/<metric>."""
    values = {key: value for key, value in record.items() if key not in ("epoch", "val")}
    values |= {f"val/{key}": value for key, value in record.get("val", {}).items()}
    return {key: value for key, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def _require(module: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"logger={extra} needs the {module} package: pip install 'mitorch[{extra}]'") from None


def _folder(save_dir: str | None, run_dir: str | Path | None, logger: str) -> Path:
    if save_dir is not None:
        return Path(save_dir).expanduser()
    if run_dir is None:
        raise ConfigError(f"logger={logger} needs a folder: set logger.{logger}.save_dir, or train with a run "
                          "directory (mitrain always has one)")
    return Path(run_dir)


class TensorBoardLogger(Logger):
    """Event files: train/loss and train/lr per logged update, epoch/<value> and val/<metric> per
    epoch (the epoch number as the step), the resolved config as text.

    Args:
        save_dir: the folder of the event files; None: <run_dir>/tensorboard.
        run_dir: the run directory (given by the trainer, not the config).
    """

    def __init__(self, save_dir: str | None = None, run_dir: str | Path | None = None) -> None:
        _require("tensorboard", "tensorboard")
        self.save_dir = _folder(save_dir, run_dir and Path(run_dir) / "tensorboard", "tensorboard")
        self._writer = None

    def start(self, config: dict[str, Any]) -> None:
        import yaml
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(self.save_dir))
        text = yaml.safe_dump(config, sort_keys=False)
        # Four spaces make a Markdown code block, which TensorBoard's text tab shows as it is.
        self._writer.add_text("config", "".join(f"    {line}\n" for line in text.splitlines()))

    def log_step(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self._writer.add_scalar(f"train/{key}", value, step)

    def log_epoch(self, record: dict[str, Any]) -> None:
        for key, value in epoch_values(record).items():
            self._writer.add_scalar(key if key.startswith("val/") else f"epoch/{key}", value, record["epoch"])
        self._writer.flush()

    def close(self, status: str) -> None:
        if self._writer is not None:
            self._writer.close()


class CSVLogger(Logger):
    """metrics.csv: one row per epoch, a column for each value of any epoch (empty where an epoch
    has none, e.g. val/ columns of epochs without validation). A resumed run replaces the rows of
    the epochs it repeats.

    Args:
        save_dir: the folder of metrics.csv; None: the run directory.
        run_dir: the run directory (given by the trainer, not the config).
    """

    def __init__(self, save_dir: str | None = None, run_dir: str | Path | None = None) -> None:
        self.path = _folder(save_dir, run_dir, "csv") / "metrics.csv"
        self._rows: list[dict[str, Any]] = []

    def start(self, config: dict[str, Any]) -> None:
        if self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as f:
                self._rows = list(csv.DictReader(f))

    def log_epoch(self, record: dict[str, Any]) -> None:
        epoch = record["epoch"]
        self._rows = [row for row in self._rows if int(row["epoch"]) < epoch]
        self._rows.append({"epoch": epoch, **epoch_values(record)})
        columns = list(dict.fromkeys(key for row in self._rows for key in row))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Columns can grow (the first validated epoch adds val/ ones), so the file is rewritten whole.
        partial = self.path.with_name(self.path.name + ".partial")
        with open(partial, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(self._rows)
        os.replace(partial, self.path)


# MLflow keeps param values up to this many characters.
_MAX_PARAM_LENGTH = 6000
_MLFLOW_STATUS = {"completed": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}


class MLflowLogger(Logger):
    """An MLflow run: the resolved config as params (dotted keys), each epoch's values as metrics
    (the epoch number as the step), the weights file as an artifact.

    Args:
        tracking_uri: where runs go when MLFLOW_TRACKING_URI is not set; None: file:./mlruns.
        experiment_name: the experiment of new runs.
        run_name: the run's name; None: MLflow's.
        log_weights: upload the weights file (output=) at the end.
        tags: set on the run (a queued training's own: mitorch.training_id, mitorch.attempt).
        run_dir: unused (MLflow keeps its own store).
    """

    def __init__(self, tracking_uri: str | None = None, experiment_name: str = "mitorch", run_name: str | None = None,
                 log_weights: bool = True, tags: dict[str, Any] | None = None,
                 run_dir: str | Path | None = None) -> None:
        _require("mlflow", "mlflow")
        self.tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri or Path("mlruns").resolve().as_uri()
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.tags = {str(key): str(value) for key, value in (tags or {}).items()}
        self.upload_weights = log_weights
        self._client = None
        self._run_id: str | None = None
        self._own_run = False

    def start(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        if self.tracking_uri.startswith("file:") or "://" not in self.tracking_uri:
            # MLflow 3 keeps its file store only on request; it needs no database package.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self._client = MlflowClient(tracking_uri=self.tracking_uri)
        # Inside an AzureML job MLFLOW_RUN_ID names the job's run, which AzureML opens and closes.
        self._run_id = os.environ.get("MLFLOW_RUN_ID")
        if self._run_id is None:
            experiment = self._client.get_experiment_by_name(self.experiment_name)
            experiment_id = (experiment.experiment_id if experiment is not None
                             else self._client.create_experiment(self.experiment_name))
            self._run_id = self._client.create_run(experiment_id, run_name=self.run_name).info.run_id
            self._own_run = True
        params = [Param(key, str(value)[:_MAX_PARAM_LENGTH]) for key, value in _flatten(config)]
        for first in range(0, len(params), 100):  # MLflow takes at most 100 params a call
            self._client.log_batch(self._run_id, params=params[first:first + 100])
        if self.tags:
            self._client.log_batch(self._run_id, tags=[RunTag(key, value) for key, value in self.tags.items()])

    def log_epoch(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, record["epoch"]) for key, value in epoch_values(record).items()
                   if math.isfinite(value)]
        self._client.log_batch(self._run_id, metrics=metrics)

    def log_weights(self, path: Path) -> None:
        if self.upload_weights and self._run_id is not None:
            self._client.log_artifact(self._run_id, str(path))

    def close(self, status: str) -> None:
        if self._own_run and self._run_id is not None:
            self._client.set_terminated(self._run_id, _MLFLOW_STATUS[status])
            self._own_run = False


def _flatten(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _flatten(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), node


__all__ = ["CSVLogger", "Logger", "Loggers", "MLflowLogger", "TensorBoardLogger", "epoch_values"]
