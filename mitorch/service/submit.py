"""What misubmit (and the sweep launcher) store: a checked, self-contained training config."""
from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mitorch.build import check_targets
from mitorch.config import resolve_paths
from mitorch.config.overrides import GROUPS
from mitorch.config.screen import shorten
from mitorch.config.validate import PATH_KEYS
from mitorch.errors import ConfigError, MiTorchError
from mitorch.files.remote import is_remote
from mitorch.store import ACTIVE, JobStore, StoreError
from mitorch.files.secrets import credential_forms
from mitorch.service import labels

# Training ids are 24 hex digits; a base= that could not be one is refused before the store is asked.
_TRAINING_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")
# Paths a training reads (outputs are written, so they need not exist yet).
_INPUT_KEYS = ("data.train", "data.val", "weights")


class DuplicateTraining(MiTorchError):
    """A training with the same fingerprint is active or completed (misubmit exits with 3)."""

    exit_code = 3


def duplicate_of(store: JobStore, fingerprint: str) -> dict[str, Any] | None:
    """The training a new one with this fingerprint would repeat: the oldest completed one, else
    the oldest active one (new, queued, running); None when there is none. Failed, cancelled and
    pruned trainings are no reason to refuse: running one again is what a user wants then."""
    found = store.find_trainings(fingerprint, ["completed", *ACTIVE])
    completed = [training for training in found if training["status"] == "completed"]
    return (completed or found or [None])[0]


def duplicate_line(training: dict[str, Any]) -> str:
    """`duplicate of ID (completed, top1_accuracy 0.953); use --allow-duplicate to queue it again`:
    a completed training with its main metric, an active one with its status."""
    from mitorch.task_types import main_metric

    shown = training["status"]
    if shown == "completed":
        try:
            metric = main_metric((training.get("config") or {}).get("task_type", "multiclass_classification"))
        except (KeyError, TypeError):  # a task type of another MiTorch: the status alone
            metric = None
        value = (training.get("metrics") or {}).get(metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            shown += f", {metric} {value:.4g}"
    return f"duplicate of {training['id']} ({shown}); use --allow-duplicate to queue it again"


def refuse_duplicate(store: JobStore, fingerprint: str) -> None:
    """Raises DuplicateTraining naming the active or completed training with this fingerprint."""
    training = duplicate_of(store, fingerprint)
    if training is not None:
        raise DuplicateTraining(duplicate_line(training))


# A submission holds a lease per fingerprint while it looks for duplicates and stores, so that
# two submissions of the same training at the same moment cannot both find none and both queue.
FINGERPRINT_LEASE_TTL_S = 30.0
FINGERPRINT_WAIT_S = 45.0  # past the TTL: a submission that died holding a lease is waited out


@contextlib.contextmanager
def fingerprints_held(store: JobStore, fingerprints: Iterable[str]) -> Iterator[None]:
    """Holds the lease `fingerprint:KEY` of each fingerprint (in sorted order, so that two sweeps
    sharing several never wait on each other in a circle) until the block ends.

    Raises:
        StoreError: another submission kept one for FINGERPRINT_WAIT_S.
    """
    holder = f"submit:{os.getpid()}:{uuid.uuid4().hex}"
    taken: list[str] = []
    try:
        for name in sorted({f"fingerprint:{key}" for key in fingerprints}):
            deadline = time.monotonic() + FINGERPRINT_WAIT_S
            while not store.acquire_lease(name, holder, FINGERPRINT_LEASE_TTL_S):
                if time.monotonic() > deadline:
                    raise StoreError(f"another submission of the same training has held {name} for "
                                     f"{FINGERPRINT_WAIT_S:.0f} s; try again")
                time.sleep(0.05)
            taken.append(name)
        yield
    finally:
        for name in taken:
            store.release_lease(name, holder)


def add_unless_duplicate(store: JobStore, training: dict[str, Any], allow_duplicate: bool = False) -> str:
    """Stores training (with its "fingerprint") and returns its id; without allow_duplicate,
    raises DuplicateTraining instead when an active or completed training has its fingerprint,
    also when another submission stores one at the same moment."""
    if allow_duplicate:
        return store.add_training(training)
    with fingerprints_held(store, [training["fingerprint"]]):
        refuse_duplicate(store, training["fingerprint"])
        return store.add_training(training)


def find_dataset(reference: str | None, store: JobStore) -> dict[str, Any] | None:
    """The registered dataset NAME[:VERSION] (the highest version without one), as the training's
    `dataset` field: {"name", "version"}, pinned to the version found."""
    if reference is None:
        return None
    from mitorch.files.datasets import parse_reference

    name, version = parse_reference(reference)
    dataset = store.get_dataset(name, version)
    if dataset is None:
        shown = name if version is None else f"{name}:{version}"
        raise StoreError(f"dataset {shown} is not registered; see midataset list, or register it with "
                         "midataset register FILE")
    return {"name": dataset["name"], "version": dataset["version"]}


def submission(cfg: DictConfig, store: JobStore, dataset: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config to store for a composed, validated cfg: absolute paths to inputs that exist on
    this machine, allowed targets, and a `base` that names a completed training of this store.

    Raises:
        ConfigError, StoreError: naming what is wrong.
    """
    _refuse_credentials(OmegaConf.to_container(cfg, resolve=False), "")
    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, key)
        if isinstance(value, str) and is_remote(value):
            raise ConfigError(f"{key} is a URL; register remote data with midataset register and queue it "
                              "with --dataset NAME (the job store keeps no URLs with tokens)")
    if dataset is not None and cfg.data.train is not None:
        raise ConfigError("--dataset gives data.train and data.val; do not set them as well")
    resolve_paths(cfg)
    _refuse_missing_inputs(cfg)
    check_targets(cfg)
    if cfg.base is not None:
        _check_base(str(cfg.base), store)
    return OmegaConf.to_container(cfg, resolve=False)


def _refuse_missing_inputs(cfg: DictConfig) -> None:
    """A training queued on data or weights that are not there would fail only once dispatched."""
    for key in _INPUT_KEYS:
        path = OmegaConf.select(cfg, key)
        if not isinstance(path, str) or os.path.exists(path):
            continue
        if key == "weights":
            raise ConfigError(f"weights {path} does not exist; give a weights file that exists, or base=<training id> "
                              "to start from a queued training's weights")
        raise ConfigError(f"{key} {path} does not exist; give a path that exists, or register the data with midataset "
                          "register FILE and queue it with --dataset NAME")


def _check_base(base: str, store: JobStore) -> None:
    """base names a completed training with weights: the runner starts from those, and fails a
    training whose base has none when it is dispatched."""
    if not _TRAINING_ID.fullmatch(base):
        raise ConfigError(f"base must be a training id (24 hex digits, see miquery), got {shorten(repr(base))}")
    training = store.get_training(base)
    if training is None:
        raise StoreError(f"base training {base} is not in the job store; see miquery for the ids")
    if training.get("status") != "completed" or not training.get("weights"):
        state = training.get("status") if training.get("status") != "completed" else "completed without weights"
        hint = ("submit this training once it has completed" if state in ("new", "queued", "running")
                else "choose a completed training (miquery lists them)")
        raise StoreError(f"base training {base} is {state}; base starts from a completed training's weights: {hint}")


def _refuse_credentials(value: Any, key: str) -> None:
    """The job store never keeps a secret: no string of a stored config may carry a credential."""
    if isinstance(value, dict):
        for name, item in value.items():
            _refuse_credentials(item, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_credentials(item, f"{key}[{index}]")
    elif isinstance(value, str) and credential_forms(value):
        raise ConfigError(f"{key} carries a credential ({', '.join(credential_forms(value))}); the job store keeps "
                          "no secrets: register remote data with midataset register and queue it with --dataset NAME")


def check_tags(tags: list[str]) -> list[str]:
    """The tags of misubmit --tag, each once in the order given (mitorch.service.labels).

    Raises:
        ConfigError: naming the tag that is wrong, without echoing a long one.
    """
    return labels.check_tags(tags, "--tag")


def lineage(config: dict[str, Any], parent: str | None = None) -> dict[str, Any]:
    """The `parent` field of a new training: the training it was cloned from (misubmit --from),
    else the training whose weights it starts from (base=ID); nothing for neither."""
    parent = parent or config.get("base")
    return {"parent": str(parent)} if parent else {}


def cloned(store: JobStore, parent_id: str, overrides: list[str]) -> tuple[DictConfig, dict[str, Any] | None]:
    """A copy of a stored training's config with key=value overrides applied (misubmit --from),
    and the parent's dataset.

    Args:
        store: the job store.
        parent_id: the training to copy.
        overrides: key=value of keys the stored config has; a value keeps the stored one's type.

    Raises:
        ConfigError, StoreError: naming what is wrong.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from mitorch.config.validate import validate

    parent = store.get_training(parent_id)
    if parent is None:
        raise StoreError(f"--from: training {parent_id} is not in the job store; see miquery for the ids")
    cfg = OmegaConf.create(parent["config"])
    for text in overrides:
        try:
            override = OverridesParser.create().parse_overrides([text])[0]
        except HydraException:
            raise ConfigError(f"--from: {shorten(repr(text))} is not key=value") from None
        key = override.get_key_element()
        if override.is_sweep_override() or override.is_add() or override.is_delete() or \
                override.key_or_group in GROUPS:
            raise ConfigError(f"--from changes values of keys the stored config has, got {shorten(text)}; to choose "
                              "another model, optimizer or schedule, submit a config without --from")
        _set(cfg, key, override.value())
    validate(cfg)
    return cfg, parent.get("dataset")


def _set(cfg: DictConfig, key: str, value: Any) -> None:
    """Sets a key the stored config has, to a value of its type (a whole number where a float is)."""
    marker = object()
    current = OmegaConf.select(cfg, key, default=marker)
    if current is marker:
        raise ConfigError(f"--from: unknown key {shorten(repr(key))}; the stored config has no such key (see "
                          "miquery ID --json)")
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if current is not None and value is not None and type(value) is not type(current) and \
            not isinstance(current, (dict, list, DictConfig)) and not OmegaConf.is_config(current):
        raise ConfigError(f"--from: {key} must be {type(current).__name__} as in the stored config, got "
                          f"{shorten(repr(value))}")
    OmegaConf.update(cfg, key, value, merge=False)
