"""A training's fingerprint: what two trainings that would give the same result have in common.

The fingerprint is the first 32 hex digits of the sha256 of canonical JSON (sorted keys, floats
as Python writes them) of:

- the training's stored config (what misubmit stores: composed, defaults applied, paths made
  absolute), its interpolations resolved, without the keys that do not change the result:
  `logger` (where metrics are also written), `data.num_workers`, `data.persistent_workers`,
  `data.prefetch_factor` (how batches are loaded, not which), `output` and `checkpoint_dir`
  (where files go), `resume` (a training is resumed to the same result), `log_every_n_steps`
  (how often progress is shown), `allowed_targets` (what may be built, not what is) and
  `cost_metrics` (whether the trained model's costs are measured, not what it learns);
- the registered dataset's name and version when the training has one (its `dataset` field);
  otherwise the identity of its local data and weights files: a file up to 8 MiB (a text list
  of images and labels, a small weights file) by the sha256 of its content, a larger one by its
  size and modification time, an image folder by the relative path, size and modification time
  of every file under it. A path that is not on this machine counts by its name only;
- MiTorch's version (`mitorch.__version__`): another version may train differently.

Priority, names, tags and the job a training belongs to are not part of the config, so two
trainings that differ only there share a fingerprint. A training stored before fingerprints
has none, and so is never anyone's duplicate.

Imports neither torch nor Optuna: misubmit computes it.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

# Keys of the stored config (dotted) that do not change a training's result.
EXCLUDED_KEYS = ("logger", "data.num_workers", "data.persistent_workers", "data.prefetch_factor", "output",
                 "checkpoint_dir", "resume", "log_every_n_steps", "allowed_targets", "cost_metrics")
# Files a training reads, whose identity counts when no registered dataset stands for them.
_FILE_KEYS = ("data.train", "data.val", "weights")
# Files up to this size count by their content, larger ones by size and modification time.
CONTENT_HASH_MAX_BYTES = 8 * 2**20
_DIGITS = 32


def fingerprint(config: dict[str, Any], dataset: dict[str, Any] | None = None) -> str:
    """The fingerprint of a training (see the module's docstring).

    Args:
        config: the training's stored config (as submission() returns it).
        dataset: the training's registered dataset ({"name", "version"}), or None.

    Returns:
        32 hex digits.
    """
    import mitorch

    normalized = _without_excluded(_resolved(config))
    identity: Any = ({"name": dataset["name"], "version": dataset["version"]} if dataset is not None
                     else {key: file_identity(value) for key in _FILE_KEYS
                           if isinstance(value := _select(normalized, key), str)})
    canonical = json.dumps({"config": normalized, "data": identity, "mitorch": mitorch.__version__},
                           sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:_DIGITS]


def file_identity(path: str) -> str:
    """What a local file or folder is, for a fingerprint: its content's hash when small, else
    its size and modification time; a folder: every file's relative path, size and time."""
    try:
        if os.path.isdir(path):
            return "folder:" + _folder_digest(path)
        size = os.path.getsize(path)
        if size <= CONTENT_HASH_MAX_BYTES:
            with open(path, "rb") as file:
                return "sha256:" + hashlib.sha256(file.read()).hexdigest()
        return f"size:{size}:mtime:{os.stat(path).st_mtime_ns}"
    except OSError:
        return "path:" + path  # not on this machine (or not readable): its name is all there is


def _folder_digest(root: str) -> str:
    digest = hashlib.sha256()
    for folder, children, files in os.walk(root):
        children.sort()
        for name in sorted(files):
            full = os.path.join(folder, name)
            stat = os.stat(full)
            digest.update(f"{os.path.relpath(full, root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _resolved(config: dict[str, Any]) -> dict[str, Any]:
    """The config with its interpolations resolved (as the training will see them), where they
    resolve here; as stored otherwise."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(OmegaConf.create(config), resolve=True)
    except OmegaConfBaseException:
        return json.loads(json.dumps(config))  # a copy: the excluded keys are removed from it


def _without_excluded(config: dict[str, Any]) -> dict[str, Any]:
    for key in EXCLUDED_KEYS:
        *parents, last = key.split(".")
        node: Any = config
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return config


def _select(config: dict[str, Any], key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


__all__ = ["CONTENT_HASH_MAX_BYTES", "EXCLUDED_KEYS", "file_identity", "fingerprint"]
