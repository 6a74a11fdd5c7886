"""Exporting MiTorch weights to ONNX or TorchScript, checked against PyTorch before anything is written.

An exported model takes float32 RGB pixels scaled to [0, 1], already resized as its sidecar says
(`<file>.json`, also in the ONNX file's metadata_props); normalization happens inside the model.
Classifiers take a batch (N, 3, S, S) and give logits (N, classes); detectors take one image
(3, S, S) and give boxes (xmin, ymin, xmax, ymax in the input's pixels), scores and labels (indices
into class_names).

Classifiers go through torch.onnx's dynamo exporter; Faster R-CNN and the other torchvision
detectors through the TorchScript-based one (dynamo=False), because torch.export cannot trace
their data-dependent box selection (batched NMS).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mitorch.errors import ConfigError, first_line
from mitorch.export.check import (BOXES_ATOL, LOGITS_ATOL, SAMPLE_IMAGES, SCORES_ATOL, check, load_exported,
                                  sample_images, tolerances)
from mitorch.export.model import DETECTION, FORMAT, ExportError, model_from_weights, read_sidecar, sidecar_path

FORMATS = ("onnx", "torchscript")
# The dynamo exporter's lowest opset; torchvision's detectors need 11 or more.
OPSET = 18


@dataclass
class Exported:
    """What export wrote: the model file, its sidecar and the check's largest differences."""

    path: Path
    sidecar: Path
    differences: dict[str, float] = field(default_factory=dict)


def export(weights: str | Path, output: str | Path, format: str = "onnx",
           source: dict[str, Any] | None = None) -> Exported:
    """Exports a weights file and writes the model and its sidecar, after checking that the export
    gives PyTorch's outputs on sample images; nothing is written when it does not.

    Args:
        format: "onnx" or "torchscript".
        source: more to record in the sidecar (a search job's job_id, trial_number, training_id).

    Raises:
        ExportError: the exporter failed, or the check found a difference over the tolerance
            (the message names the largest one).
        DataError: the weights file is missing or not MiTorch weights.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown format '{format}'; choose from {', '.join(FORMATS)}")
    output = Path(output)
    if output.is_dir():
        suffix = "onnx" if format == "onnx" else "pt"
        raise ConfigError(f"-o {output} is a folder; name the file to write, e.g. -o {output / f'model.{suffix}'}")
    if format == "onnx":
        _require_onnx()
    model, sidecar = model_from_weights(Path(weights))
    sidecar |= {"model_format": format, **(source or {})}
    images = sample_images(sidecar)
    with tempfile.TemporaryDirectory() as folder:
        temporary = Path(folder) / "model"
        with _quiet():
            if format == "onnx":
                _export_onnx(model, sidecar, images[0], temporary)
            else:
                _export_torchscript(model, sidecar, images[0], temporary)
        runner = load_exported(temporary, sidecar)
        differences = check(model, runner, sidecar, images)
        sidecar["check"] = {"images": SAMPLE_IMAGES, "largest_differences": differences,
                            "tolerances": tolerances(sidecar["task_type"])}
        if format == "onnx":
            _add_metadata(temporary, sidecar)
        output.parent.mkdir(parents=True, exist_ok=True)
        partial, partial_sidecar = output.with_name(f".{output.name}.tmp"), output.with_name(f".{output.name}.json.tmp")
        shutil.copyfile(temporary, partial)
        partial_sidecar.write_text(json.dumps(sidecar, indent=2) + "\n")
        os.replace(partial, output)
        os.replace(partial_sidecar, sidecar_path(output))
    return Exported(output, sidecar_path(output), differences)


def _require_onnx() -> None:
    from importlib.util import find_spec

    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if find_spec(name) is None]
    if missing:
        raise ExportError(f"ONNX export needs {', '.join(missing)}: pip install 'mitorch[export]' (or give "
                          "--format torchscript)")


@contextlib.contextmanager
def _quiet():
    """The exporters' progress lines and tracer warnings stay off the command's output."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def _export_onnx(model: nn.Module, sidecar: dict[str, Any], image: torch.Tensor, path: Path) -> None:
    names = {"input_names": ["image"], "output_names": sidecar["outputs"]}
    try:
        if sidecar["task_type"] != DETECTION:
            try:
                torch.onnx.export(model, (image,), str(path), dynamo=True, opset_version=OPSET, external_data=False,
                                  dynamic_shapes=({0: torch.export.Dim("batch")},), **names)
                sidecar["exporter"] = "dynamo"
                return
            except Exception:  # a model torch.export cannot trace may still go through the tracing exporter
                path.unlink(missing_ok=True)
        torch.onnx.export(model, (image,), str(path), dynamo=False, opset_version=OPSET,
                          dynamic_axes=None if sidecar["task_type"] == DETECTION else {"image": {0: "batch"}},
                          **names)
        sidecar["exporter"] = "tracing"
    except Exception as e:  # the exporters raise many types; the first line says what failed
        raise ExportError(f"the ONNX exporter failed: {first_line(e)}") from None


def _export_torchscript(model: nn.Module, sidecar: dict[str, Any], image: torch.Tensor, path: Path) -> None:
    try:
        # Detectors choose boxes by data-dependent control flow, which only scripting keeps.
        scripted = torch.jit.script(model) if sidecar["task_type"] == DETECTION else torch.jit.trace(model, image)
        torch.jit.save(scripted, str(path))
    except Exception as e:
        raise ExportError(f"the TorchScript export failed: {first_line(e)}") from None


def _add_metadata(path: Path, sidecar: dict[str, Any]) -> None:
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in sidecar.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save(proto, str(path))


__all__ = ["BOXES_ATOL", "FORMAT", "FORMATS", "LOGITS_ATOL", "SCORES_ATOL", "ExportError", "Exported", "check",
           "export", "load_exported", "read_sidecar", "sample_images", "sidecar_path"]
