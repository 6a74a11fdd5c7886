"""`mitrain --training-id ID --attempt N`: run one attempt of a queued training and keep its
record up to date.

Every write of this process is fenced by its attempt: once a controller has given the training
to a newer attempt (or cancelled it), the first refused write stops this process at once, with
a line in its log, and it writes nothing more.
"""
from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from mitorch.envvars import env_float
from mitorch.errors import Interrupted, MiTorchError, Stopped
from mitorch.files import artifacts, remote
from mitorch.files.artifacts import attempt_dir
from mitorch.files.datasets import SPLITS, local_split
from mitorch.service import transitions
from mitorch.service.executors.local import local_host
from mitorch.store import JobStore, StoreError, open_store

T = TypeVar("T")
# Exit status of a process whose attempt was replaced: it stopped on purpose, wrote nothing more.
REPLACED_EXIT = 75


class Cancelled(Stopped):
    """The training was cancelled (micontrol cancel)."""


class Pruned(Cancelled):
    """Its search job's pruner stopped the training: it ends with status pruned."""


class Replaced(Stopped):
    """This attempt is no longer the training's current one: another process owns the training."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=REPLACED_EXIT)


def _say(message: str) -> None:
    stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    print(f"mitrain: {stamp} {message}", file=sys.stderr, flush=True)


def run_training(training_id: str, attempt: int | None = None, store: JobStore | None = None) -> dict[str, Any]:
    """Runs one attempt of a stored training to its end and records it: running (host, pid,
    heartbeats), one result per epoch, then completed (metrics, weights), failed (error),
    cancelled, or back in the queue when preempted (SIGTERM).

    Args:
        attempt: the attempt the controller dispatched; None (a user runs a `new` training by
            hand): this process starts a new attempt itself.

    Returns:
        The final validation metrics.

    Raises:
        Replaced: a newer attempt (or a cancel) took the training over; nothing more was written.
    """
    heartbeat_s = heartbeat_interval()  # a bad setting stops here, not in the heartbeat's thread
    if store is None:
        uri = _key_vault_db_uri()
        store = _with_retry(lambda: open_store(uri), "opening the job store")
    training = _with_retry(lambda: store.get_training(training_id), "reading the training")
    if training is None:
        raise StoreError(f"no training {training_id}; see miquery for the ids")
    if _global_rank() != 0:
        return _train_beside_rank_0(store, training, attempt)
    if attempt is None:
        attempt = _start_by_hand(store, training)
    run = _Attempt(store, training_id, attempt, heartbeat_s)
    run.start()
    return _run_to_its_end(run, training)


def _run_to_its_end(run: _Attempt, training: dict[str, Any]) -> dict[str, Any]:
    """Trains the started attempt and records how it ended; whatever stopped it is raised again."""
    try:
        metrics, weights = _train(run, run.store.get_training(run.training_id))
    except Replaced:
        run.stop_heartbeat()
        raise
    except Interrupted as e:
        # Preempted, not failed: back in the queue without using a retry; it resumes from last.pt.
        if run.current().get("cancel_requested"):
            run.finish("cancelled", "cancelled", error="cancelled (micontrol cancel)")
            raise Cancelled(f"training {run.training_id} was cancelled") from None
        _publish_preemption_checkpoint(run)
        run.finish("new", "preempted", requeue_reason=str(e), preemptions=training.get("preemptions", 0) + 1)
        raise
    except BaseException as e:
        status, fields = _ended_by(e)
        run.finish(status, status, **fields)
        if status == "pruned":
            _remove_checkpoints(run)  # a pruned trial never runs again
        raise
    run.finish("completed", "completed", metrics=metrics, weights=weights)
    _remove_checkpoints(run)
    return metrics


def _ended_by(error: BaseException) -> tuple[str, dict[str, Any]]:
    """The status an attempt stopped by `error` ends in, and what its record says of it."""
    if isinstance(error, Pruned):
        return "pruned", {"error": str(error)}
    if isinstance(error, Cancelled):
        return "cancelled", {"error": str(error)}
    if isinstance(error, MiTorchError):
        return "failed", {"error": str(error)}
    tail = "".join(traceback.format_exception(error))[-4000:]  # a bug of ours: its traceback helps
    return "failed", {"error": f"{type(error).__name__}: {error}", "traceback": tail}


def heartbeat_interval() -> float:
    """Seconds between heartbeats ($MITORCH_HEARTBEAT_S, default 30).

    Raises:
        ConfigError: the setting is not a number of at least 0.05.
    """
    return env_float("MITORCH_HEARTBEAT_S", 30.0, minimum=0.05)


def _remove_checkpoints(run: _Attempt) -> None:
    """Deletes the checkpoints of a training that will never resume (completed or pruned)."""
    try:
        for path in artifacts.remove_checkpoints(run.training_id, run.attempt):
            _say(f"removed {path} (the weights are kept; MITORCH_KEEP_CHECKPOINTS=1 keeps checkpoints)")
    except MiTorchError as e:  # the training has ended; a leftover checkpoint costs only space
        _say(f"could not remove a checkpoint: {e}")


def _key_vault_db_uri() -> str | None:
    """An AzureML job's database URI, read from its workspace's Key Vault (its spec holds only
    the names); None elsewhere (MITORCH_DB_URI)."""
    from mitorch.azureml import keyvault

    return keyvault.db_uri() if keyvault.wanted() else None


def _publish_preemption_checkpoint(run: _Attempt) -> None:
    """Uploads the checkpoint saved at SIGTERM (mid-epoch) when artifacts are remote, so the next
    attempt, on any machine, resumes from there rather than from the last epoch end. A failed
    upload is said and the requeue goes on: the last epoch's checkpoint is still there."""
    checkpoint = run.folder / "last.pt"
    if not checkpoint.exists():
        return
    try:
        artifacts.publish(run.training_id, checkpoint, run.attempt)
    except (MiTorchError, OSError) as e:
        _say(f"training {run.training_id} attempt {run.attempt}: the preemption checkpoint was not uploaded "
             f"({' '.join(str(e).split())[:200]}); the next attempt resumes from the last epoch's")


def _global_rank() -> int:
    """RANK as AzureML's PyTorch distribution and torchrun set it; 0 when not distributed."""
    return int(os.environ.get("RANK", "0").strip() or 0)


def _train_beside_rank_0(store: JobStore, training: dict[str, Any], attempt: int | None) -> dict[str, Any]:
    """Another process of a distributed attempt: it trains in step with rank 0 and reads the
    training, but writes nothing to the store. Rank 0 alone starts the attempt and writes its
    heartbeat, its results and its outcome, so the store shows one attempt, whatever the world size.
    """
    import mitorch

    training_id, rank = training["id"], _global_rank()
    if attempt is None:
        raise StoreError(f"training {training_id}: the process of rank {rank} needs --attempt N "
                         "(rank 0 alone starts an attempt)")
    if training.get("attempt") != attempt:
        message = (f"training {training_id} attempt {attempt}: rank {rank} found attempt "
                   f"{training.get('attempt')} current; this process stops")
        _say(message)
        raise Replaced(message)
    folder = attempt_dir(training_id, attempt)
    cfg = _training_config(store, training, folder, attempt)
    if int(os.environ.get("LOCAL_RANK", "0").strip() or 0) == 0:
        # The first process of another node: its processes resume from the same checkpoint as
        # rank 0 (they all join the process group, after this, before reading it).
        artifacts.restore_checkpoint(training_id, attempt, folder, training.get("resume_from_attempt", 1))
    _say(f"training {training_id} attempt {attempt}: rank {rank} trains beside rank 0, which records it")
    try:
        return mitorch.train(cfg, run_dir=folder / "run")
    except Interrupted as e:
        # SIGTERM reached every rank and they stopped together; rank 0 records how the attempt
        # ended. This one exits cleanly: under `srun --kill-on-bad-exit` (the Slurm executor's
        # multi-process jobs) a failing status would kill rank 0 in the middle of that record.
        _say(f"training {training_id} attempt {attempt}: rank {rank} stopped with rank 0 ({e})")
        return {}


def _start_by_hand(store: JobStore, training: dict[str, Any]) -> int:
    """Takes a `new` training as a new attempt, as a controller's claim would."""
    attempt = transitions.take_by_hand(store, training, f"hand:{local_host()}")
    if attempt is None:
        raise StoreError(f"training {training['id']} is {training['status']}, not new; "
                         "requeue it with micontrol requeue")
    return attempt


def _train(run: _Attempt, training: dict[str, Any]) -> tuple[dict[str, Any], str]:
    import mitorch

    store, training_id = run.store, run.training_id

    def record_epoch(record: dict[str, Any]) -> None:
        run.write(lambda: store.put_result(training_id, record, attempt=run.attempt), f"epoch {record['epoch']}")
        if (run.folder / "last.pt").exists():
            artifacts.publish(training_id, run.folder / "last.pt", run.attempt)  # uploads when artifacts are remote
        requests = run.current()
        if requests.get("cancel_requested"):
            raise Cancelled(f"training {training_id} was cancelled at the end of epoch {record['epoch']}")
        if requests.get("prune_requested"):
            raise Pruned(f"training {training_id} was pruned by its search job at the end of epoch {record['epoch']}")

    cfg = _training_config(store, training, run.folder, run.attempt)
    source = artifacts.restore_checkpoint(training_id, run.attempt, run.folder, training.get("resume_from_attempt", 1))
    if source is not None:
        _say(f"attempt {run.attempt} starts from the checkpoint of {source}")
    metrics = mitorch.train(cfg, run_dir=run.folder / "run", epoch_callbacks=[record_epoch],
                            lineage=lineage(training, run.attempt))
    return metrics, artifacts.publish(training_id, Path(cfg.output), run.attempt)


def lineage(training: dict[str, Any], attempt: int) -> dict[str, Any]:
    """What the weights files of a training's attempt record of it, so that a model file found
    anywhere leads back to its run: id, attempt, fingerprint, parent, job, dataset, MiTorch version."""
    import mitorch

    dataset = training.get("dataset")
    return {"training_id": training["id"], "attempt": attempt, "fingerprint": training.get("fingerprint"),
            "parent": training.get("parent"), "job_id": training.get("job_id"),
            "dataset": {"name": dataset["name"], "version": dataset["version"]} if dataset else None,
            "mitorch_version": mitorch.__version__}


class _Attempt:
    """The fenced writes of one attempt, and its heartbeat."""

    def __init__(self, store: JobStore, training_id: str, attempt: int, heartbeat_s: float) -> None:
        self.store, self.training_id, self.attempt, self.heartbeat_s = store, training_id, attempt, heartbeat_s
        self.folder = attempt_dir(training_id, attempt)
        self._stop = threading.Event()

    def start(self) -> None:
        host, pid = local_host(), os.getpid()
        where = artifacts.artifact_url(self.training_id, "") or str(self.folder.parent)
        self.folder.mkdir(parents=True, exist_ok=True)
        started = _with_retry(lambda: transitions.start(self.store, self.training_id, self.attempt, host, pid,
                                                        str(self.folder / "train.log"), where), "starting")
        if not started:
            self._refused("start")
        _say(f"training {self.training_id} attempt {self.attempt} started on {host}, pid {pid}")
        threading.Thread(target=self._heartbeat, daemon=True).start()

    def write(self, action: Callable[[], bool], what: str) -> None:
        """A fenced write that rides out a store outage; a refusal means this attempt was replaced."""
        if not _with_retry(action, what):
            self._refused(what)

    def current(self) -> dict[str, Any]:
        """The training's record, while this attempt still holds it: what micontrol asks of it
        (cancel_requested) and what its search job's pruner asks (prune_requested)."""
        training = _with_retry(lambda: self.store.get_training(self.training_id), "reading the training")
        if training is None or training.get("attempt") != self.attempt:
            self._refused("a check for requests")
        return training

    def finish(self, status: str, outcome: str, **fields: Any) -> None:
        """Ends this attempt (running -> status) with its outcome, after its log is published."""
        self.stop_heartbeat()
        log = self.folder / "train.log"
        if log.exists():
            try:
                artifacts.publish(self.training_id, log, self.attempt)
            except MiTorchError as e:  # a failed upload must not hide why the training stopped
                _say(str(e))
        self.write(lambda: transitions.end_attempt(self.store, self.training_id, self.attempt, came_from="running",
                                                   to=status, outcome=outcome, **fields), f"recording {outcome}")
        _say(f"training {self.training_id} attempt {self.attempt} ended: {outcome}")

    def stop_heartbeat(self) -> None:
        self._stop.set()

    def _refused(self, what: str) -> None:
        self._stop.set()
        try:
            training = self.store.get_training(self.training_id) or {}
        except StoreError:
            training = {}
        now_held = training.get("attempt", self.attempt)
        why = (f"attempt {now_held} replaced it" if now_held != self.attempt
               else f"it is {training.get('status')} (cancelled or requeued by micontrol)")
        message = (f"training {self.training_id} attempt {self.attempt}: {what} refused, {why}; "
                   "this process stops and writes nothing more")
        _say(message)
        raise Replaced(message)

    def _heartbeat(self) -> None:
        failing_since: float | None = None
        interval = self.heartbeat_s
        while not self._stop.wait(interval):
            try:
                beat = transitions.heartbeat(self.store, self.training_id, self.attempt)
            except Exception as e:  # noqa: BLE001 - any store error: keep beating, never die
                if failing_since is None:
                    failing_since = time.monotonic()
                    _say(f"heartbeat failed ({e}); retrying every {interval:g} s")
                continue
            if failing_since is not None:
                _say(f"heartbeat back after {time.monotonic() - failing_since:.0f} s")
                failing_since = None
            if not beat and not self._stop.is_set():
                # Replaced (or cancelled by a controller that could not reach this process): stop
                # at once, from this thread, before the training writes a file more.
                try:
                    self._refused("heartbeat")
                except Exception:  # noqa: BLE001 - Replaced, or the store failing while it explains
                    pass
                os._exit(REPLACED_EXIT)


def _with_retry(action: Callable[[], T], what: str) -> T:
    """Runs a store request, retrying through an outage (a locked SQLite file, a MongoDB
    failover) of up to $MITORCH_STORE_OUTAGE_S seconds (default 300)."""
    limit = env_float("MITORCH_STORE_OUTAGE_S", 300.0, minimum=0)
    deadline, delay = time.monotonic() + limit, 0.5
    while True:
        try:
            return action()
        except StoreError as e:
            if time.monotonic() >= deadline:
                raise StoreError(f"the job store failed for more than {limit:g} s (MITORCH_STORE_OUTAGE_S) "
                                 f"while {what}: {e}") from None
            _say(f"job store error while {what} ({e}); retrying")
            time.sleep(min(delay, max(deadline - time.monotonic(), 0.05)))
            delay = min(delay * 2, 10.0)


def _training_config(store: JobStore, training: dict[str, Any], folder: Path, attempt: int) -> Any:
    from omegaconf import OmegaConf, open_dict

    cfg = OmegaConf.create(training["config"])
    OmegaConf.set_struct(cfg, True)
    cfg.output = str(folder / "model.pt")
    cfg.checkpoint_dir = str(folder)  # this attempt's own last.pt
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
    mlflow = (cfg.get("logger") or {}).get("mlflow")
    if mlflow is not None:  # its MLflow run says which training and attempt it is
        with open_dict(mlflow):
            mlflow.tags = {**(mlflow.get("tags") or {}), "mitorch.training_id": training["id"],
                           "mitorch.attempt": attempt}
            if mlflow.get("run_name") is None:
                mlflow.run_name = f"{training.get('name') or training['id']} attempt {attempt}"
    return cfg
