"""The check of an export: it runs on sample images and must give the PyTorch model's outputs."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mitorch.export.model import DETECTION, ExportError

SAMPLE_IMAGES = 3
# The largest differences an export may show against PyTorch on the sample images.
LOGITS_ATOL = 1e-4
SCORES_ATOL = 1e-4
BOXES_ATOL = 1e-2  # pixels


def sample_images(sidecar: dict[str, Any], count: int = SAMPLE_IMAGES, seed: int = 0) -> list[torch.Tensor]:
    """Random inputs of the exported model's shape (a batch of count for classifiers)."""
    generator = torch.Generator().manual_seed(seed)
    size = sidecar["image_size"]
    if sidecar["task_type"] == DETECTION:
        return [torch.rand(3, size, size, generator=generator) for _ in range(count)]
    return [torch.rand(count, 3, size, size, generator=generator)]


def load_exported(path: str | Path, sidecar: dict[str, Any]):
    """A callable that runs an exported model: tensor in, tuple of tensors out."""
    if sidecar["model_format"] == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export
            module = torch.jit.load(str(path), map_location="cpu").eval()

        def run_torchscript(image: torch.Tensor) -> tuple[torch.Tensor, ...]:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                outputs = module(image)
            return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)
        return run_torchscript
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("running an ONNX model needs onnxruntime: pip install 'mitorch[export]'") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run_onnx(image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = session.run(None, {"image": image.numpy()})
        return tuple(torch.from_numpy(o) for o in outputs)
    return run_onnx


def tolerances(task_type: str) -> dict[str, float]:
    if task_type == DETECTION:
        return {"boxes": BOXES_ATOL, "scores": SCORES_ATOL}
    return {"logits": LOGITS_ATOL}


def check(model: nn.Module, runner, sidecar: dict[str, Any], images: list[torch.Tensor]) -> dict[str, float]:
    """The largest differences between the exported model (runner) and model on images.

    Detections are compared as sets: each PyTorch box is matched to the exported box of the same
    label nearest to it, so that boxes whose scores tie may come in either order; the counts and
    labels must agree exactly.

    Raises:
        ExportError: a difference over its tolerance, in one line.
    """
    allowed = tolerances(sidecar["task_type"])
    largest = dict.fromkeys(allowed, 0.0)
    for number, image in enumerate(images):
        with torch.no_grad():
            expected = model(image)
        got = runner(image)
        if sidecar["task_type"] != DETECTION:
            largest["logits"] = max(largest["logits"], _difference(expected, got[0]))
            continue
        boxes, scores, labels = (t.detach() for t in expected)
        if len(got[0]) != len(boxes):
            raise ExportError(f"the export gives {len(got[0])} boxes on sample image {number}, PyTorch {len(boxes)}; "
                              "nothing was written")
        box_gap, score_gap = _matched(boxes, scores, labels, *got)
        if box_gap == float("inf"):
            raise ExportError(f"the {sidecar['model_format']} export's boxes on sample image {number} do not match "
                              "PyTorch's: a box has no counterpart of the same label; nothing was written")
        largest["boxes"] = max(largest["boxes"], box_gap)
        largest["scores"] = max(largest["scores"], score_gap)
    for name, value in largest.items():
        if not value <= allowed[name]:
            raise ExportError(f"the {sidecar['model_format']} export differs from PyTorch on the sample images: "
                              f"largest {name} difference {value:.3g} > {allowed[name]:g}; nothing was written")
    return {name: float(value) for name, value in largest.items()}


def _difference(expected: torch.Tensor, got: torch.Tensor) -> float:
    if expected.shape != got.shape:
        return float("inf")
    return float((expected.float() - got.float()).abs().max()) if expected.numel() else 0.0


def _matched(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, got_boxes: torch.Tensor,
             got_scores: torch.Tensor, got_labels: torch.Tensor) -> tuple[float, float]:
    """(largest box difference, largest score difference) over a greedy matching by label."""
    if not len(boxes):
        return 0.0, 0.0
    gaps = torch.cdist(boxes.float(), got_boxes.float(), p=float("inf")) + (scores[:, None] - got_scores[None]).abs()
    gaps[labels[:, None] != got_labels.to(labels.dtype)[None]] = float("inf")
    box_gap = score_gap = 0.0
    taken = torch.zeros(len(got_boxes), dtype=torch.bool)
    for i in range(len(boxes)):
        row = gaps[i].masked_fill(taken, float("inf"))
        j = int(row.argmin())
        if not torch.isfinite(row[j]):
            return float("inf"), float("inf")
        taken[j] = True
        box_gap = max(box_gap, float((boxes[i] - got_boxes[j]).abs().max()))
        score_gap = max(score_gap, float((scores[i] - got_scores[j]).abs()))
    return box_gap, score_gap
