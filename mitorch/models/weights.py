"""Saving MiTorch weights and loading them, or plain torchvision state dicts, into a model."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mitorch.errors import DataError, first_line

FORMAT = "mitorch-weights-v1"


def save_weights(path: str | Path, model: nn.Module, class_names: list[str], task_type: str,
                 config: dict[str, Any], lineage: dict[str, Any] | None = None) -> None:
    """Writes weights with their class names and resolved config, atomically; with lineage (a
    queued training's id, fingerprint, dataset, MiTorch version...) under the key `lineage`.
    Files without it (written by hand, or before lineage was recorded) load the same.

    The file loads with torch.load(path, weights_only=True).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "model": state, "class_names": list(class_names), "task_type": task_type,
               "config": config, **({"lineage": lineage} if lineage is not None else {})}
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Reads a weights file: (state dict, metadata). Metadata is empty for a plain state dict.

    Raises:
        DataError: the file is missing or is not a weights file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"weights file not found: {path}")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a corrupt or foreign file
        raise DataError(f"weights file {path} cannot be loaded: {first_line(e)}") from None
    if isinstance(content, dict) and isinstance(content.get("model"), dict):
        metadata = {k: v for k, v in content.items() if k != "model"}
        state = content["model"]
    elif isinstance(content, dict) and all(isinstance(v, torch.Tensor) for v in content.values()):
        metadata, state = {}, content
    else:
        raise DataError(f"weights file {path} holds neither MiTorch weights nor a state dict")
    # Weights saved from a DistributedDataParallel or compiled model carry a prefix.
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state, metadata


def classifier_head(model: nn.Module) -> str:
    """The name of the model's final classification layer (its last Linear), e.g. 'fc'."""
    name = ""
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            name = module_name
    return name


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """The class-dependent layers: a classifier's last Linear; a detector's box predictor or
    classification head."""
    if hasattr(model, "roi_heads"):
        return ("roi_heads.box_predictor.",)
    if hasattr(getattr(model, "head", None), "classification_head"):
        return ("head.classification_head.",)
    return (f"{classifier_head(model)}.",)


def pretrained_state(weights: Any) -> tuple[dict[str, torch.Tensor], Path]:
    """The state dict of torchvision weights (an entry of a *_Weights enum) and its file in the
    torch hub cache; downloaded there with a progress bar when missing, reused afterwards.

    Raises:
        ConfigError: the file is not in the cache and cannot be downloaded; the message names
            the file, where to put it, and -w as the other way.
    """
    from urllib.parse import urlparse

    from mitorch.errors import ConfigError

    file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    try:
        return weights.get_state_dict(progress=True, check_hash=False), file
    except (OSError, ValueError) as e:  # URLError and HTTPError are OSErrors
        reason = " ".join(str(getattr(e, "reason", e)).split())[:120]
        raise ConfigError(f"pretrained weights {file.name} are not in the torch hub cache and could not be "
                          f"downloaded ({reason}); put the file at {file} (from {weights.url}), set TORCH_HOME to "
                          "a cache that has it, or give a weights file with -w") from None


def load_state(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path, replace_head: bool) -> bool:
    """Loads a state dict into model.

    Args:
        replace_head: when the class-dependent layers' class count differs, keep the model's
            freshly initialised ones instead of failing.

    Returns:
        Whether the head was replaced.

    Raises:
        DataError: the weights do not fit the model (other than a differently sized head).
    """
    expected = model.state_dict()
    head_keys = {k for k in expected if k.startswith(head_prefixes(model))}
    mismatched = {k for k, v in state.items() if k in expected and v.shape != expected[k].shape}
    replaced = bool(mismatched) and mismatched <= head_keys
    if mismatched and not (replaced and replace_head):
        key = sorted(mismatched)[0]
        raise DataError(f"weights {path} do not fit the model: {key} has shape {tuple(state[key].shape)}, "
                        f"the model expects {tuple(expected[key].shape)} (is it the same architecture and class count?)")
    missing = sorted(set(expected) - set(state) - (head_keys if replaced else set()))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        detail = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}"
        raise DataError(f"weights {path} do not fit the model ({detail}{', ...' if len(missing or unexpected) > 3 else ''}); "
                        "is it the same architecture?")
    model.load_state_dict({k: v for k, v in state.items() if k not in mismatched}, strict=False)
    return replaced
