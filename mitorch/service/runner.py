"""`mitrain --training-id ID`: run one queued training and keep its record up to date."""
from __future__ import annotations

import os
import socket
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from mitorch.errors import Interrupted, MiTorchError
from mitorch.service import artifacts, remote
from mitorch.service.artifacts import training_dir
from mitorch.service.datasets import SPLITS, local_split
from mitorch.store import JobStore, StoreError, open_store
from mitorch.store.base import now

HEARTBEAT_S = float(os.environ.get("MITORCH_HEARTBEAT_S", "30"))


class Cancelled(MiTorchError):
    """The training was cancelled (micontrol cancel) and stopped at an epoch's end."""


def run_training(training_id: str, store: JobStore | None = None) -> dict[str, Any]:
    """Runs a stored training to its end and records it: running (host, pid, heartbeats),
    one result per epoch, then completed (metrics, weights), failed (error) or cancelled.

    Returns:
        The final validation metrics.
    """
    import mitorch

    store = store or open_store()
    training = store.get_training(training_id)
    if training is None:
        raise StoreError(f"no training {training_id}; see miquery for the ids")
    folder = training_dir(training_id)
    started = store.update_training(training_id, {"status": "running", "host": socket.gethostname(),
                                                  "pid": os.getpid(), "started_at": now(), "heartbeat_at": now(),
                                                  "artifacts": artifacts.artifact_url(training_id, "") or str(folder),
                                                  "log": str(folder / "train.log")},
                                   expected_status=["new", "queued"])
    if not started:
        raise StoreError(f"training {training_id} is {training['status']}, not new or queued; "
                         "requeue it with micontrol requeue")
    stop_heartbeat = threading.Event()
    threading.Thread(target=_heartbeat, args=(store, training_id, stop_heartbeat), daemon=True).start()

    def record_epoch(record: dict[str, Any]) -> None:
        store.put_result(training_id, record)
        if (folder / "last.pt").exists():
            artifacts.publish(training_id, folder / "last.pt")  # uploads when artifacts are remote
        if store.get_training(training_id).get("cancel_requested"):
            raise Cancelled(f"training {training_id} was cancelled at the end of epoch {record['epoch']}")

    try:
        cfg = _training_config(store, training, folder)
        artifacts.restore_checkpoint(training_id, folder)
        metrics = mitorch.train(cfg, run_dir=folder / "run", epoch_callbacks=[record_epoch])
        weights = artifacts.publish(training_id, Path(cfg.output))
    except Cancelled as e:
        _finish(store, training_id, stop_heartbeat, {"status": "cancelled", "error": str(e)})
        raise
    except Interrupted as e:
        # Preempted, not failed: back in the queue without using a retry; it resumes from last.pt.
        stop_heartbeat.set()
        _publish_quietly(training_id, folder / "last.pt")
        store.update_training(training_id, {"status": "new", "requeue_reason": str(e),
                                            "preemptions": training.get("preemptions", 0) + 1},
                              expected_status="running")
        raise
    except MiTorchError as e:
        _finish(store, training_id, stop_heartbeat, {"status": "failed", "error": str(e)})
        raise
    except BaseException as e:
        tail = "".join(traceback.format_exception(e))[-4000:]
        _finish(store, training_id, stop_heartbeat, {"status": "failed", "error": f"{type(e).__name__}: {e}",
                                                     "traceback": tail})
        raise
    _finish(store, training_id, stop_heartbeat, {"status": "completed", "metrics": metrics, "weights": weights})
    return metrics


def _training_config(store: JobStore, training: dict[str, Any], folder: Any) -> Any:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(training["config"])
    OmegaConf.set_struct(cfg, True)
    cfg.output = str(folder / "model.pt")
    cfg.checkpoint_dir = str(folder)  # a retry resumes from last.pt
    if cfg.get("base") is not None:
        base = store.get_training(cfg.base)
        if base is None or base.get("status") != "completed" or not base.get("weights"):
            state = "missing" if base is None else base["status"]
            raise StoreError(f"base training {cfg.base} has no weights to start from (it is {state})")
        cfg.weights, cfg.base = str(remote.fetch(base["weights"])), None
    if training.get("dataset"):
        name, version = training["dataset"]["name"], training["dataset"]["version"]
        dataset = store.get_dataset(name, version)
        if dataset is None:
            raise StoreError(f"dataset {name}:{version} is not registered; register it with midataset register")
        cfg.data.train, cfg.data.val = (local_split(dataset[split]) for split in SPLITS)
    return cfg


def _finish(store: JobStore, training_id: str, stop: threading.Event, fields: dict[str, Any]) -> None:
    stop.set()
    _publish_quietly(training_id, training_dir(training_id) / "train.log")
    store.update_training(training_id, {**fields, "completed_at": now()}, expected_status="running")


def _publish_quietly(training_id: str, path: Path) -> None:
    """Uploads a file on the way out; a failure there must not hide why the training stopped."""
    if path.exists():
        try:
            artifacts.publish(training_id, path)
        except MiTorchError as e:
            print(f"mitrain: {e}", file=sys.stderr)


def _heartbeat(store: JobStore, training_id: str, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            store.update_training(training_id, {"heartbeat_at": now()}, expected_status="running")
        except StoreError:
            pass  # the next beat tries again; the controller tolerates a missed one
