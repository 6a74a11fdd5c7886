"""What differs between task types: moving batches, the loss, the metrics and their names.

The trainer and evaluate() only talk to a task through the Task protocol.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
import torchmetrics
from torch import nn
from torch.nn import functional as F

from mitorch.task_types import main_metric


class Task(Protocol):
    """What the trainer and evaluate() rely on from a task.

    Inputs and targets are whatever the task's loader yields: a tensor of images and one of
    labels for classification, lists of images and of per-image box dicts for detection.
    """

    def to_device(self, inputs: Any, targets: Any, device: torch.device,
                  channels_last: bool = False) -> tuple[Any, Any]:
        """A batch moved to device (images in channels-last layout when asked)."""

    def count(self, inputs: Any) -> int:
        """The number of images in a batch."""

    def train_loss(self, model: nn.Module, inputs: Any, targets: Any) -> torch.Tensor:
        """The loss to backpropagate for one batch, from the model in training mode."""

    def eval_batch(self, model: nn.Module, inputs: Any, targets: Any, metrics: nn.Module,
                   predictions: list | None = None) -> torch.Tensor:
        """Updates metrics with one batch; returns the batch's loss summed over its images."""

    def metrics(self) -> nn.Module:
        """A fresh metric state (torchmetrics) for one evaluation."""

    def compute(self, metrics: nn.Module) -> dict[str, float | None]:
        """The metrics' values under the names of the metrics contract."""


@dataclass(frozen=True)
class ClassificationTask:
    """Loss and metrics for multiclass or multilabel classification."""

    multilabel: bool
    num_classes: int

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss over the batch."""
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits, targets)
        return F.cross_entropy(logits, targets)

    def loss_sum(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Sum over the batch of each image's loss (for an exact mean over a whole set)."""
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=1).sum()
        return F.cross_entropy(logits, targets, reduction="sum")

    def metrics(self) -> nn.Module:
        """A torchmetrics collection named as in the metrics contract."""
        n = self.num_classes
        if self.multilabel:
            return torchmetrics.MetricCollection({
                "accuracy_50": torchmetrics.classification.MultilabelAccuracy(n, threshold=0.5, average="micro"),
                "average_precision": torchmetrics.classification.MultilabelAveragePrecision(n, average="macro"),
            })
        return torchmetrics.MetricCollection({
            "top1_accuracy": torchmetrics.classification.MulticlassAccuracy(n, top_k=1, average="micro"),
            "top5_accuracy": torchmetrics.classification.MulticlassAccuracy(n, top_k=min(5, n), average="micro"),
            "average_precision": torchmetrics.classification.MulticlassAveragePrecision(n, average="macro"),
        })

    def update_metrics(self, metrics: nn.Module, logits: torch.Tensor, targets: torch.Tensor) -> None:
        logits = logits.float()
        if self.multilabel:
            metrics.update(logits.sigmoid(), targets.long())
        else:
            metrics.update(logits.softmax(dim=1), targets)

    @property
    def task_type(self) -> str:
        return "multilabel_classification" if self.multilabel else "multiclass_classification"

    @property
    def main_metric(self) -> str:
        return main_metric(self.task_type)

    # -- what the trainer calls ------------------------------------------------------------

    def to_device(self, inputs: torch.Tensor, targets: torch.Tensor, device: torch.device,
                  channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = inputs.to(device, non_blocking=True)
        if channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs, targets.to(device, non_blocking=True)

    def count(self, inputs: torch.Tensor) -> int:
        return inputs.shape[0]

    def train_loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss(model(inputs), targets)

    def eval_batch(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, metrics: nn.Module,
                   predictions: list | None = None) -> torch.Tensor:
        """Updates metrics with one batch; returns the batch's summed loss."""
        logits = model(inputs).float()
        self.update_metrics(metrics, logits, targets)
        return self.loss_sum(logits, targets)

    def compute(self, metrics: nn.Module) -> dict[str, float | None]:
        return {name: to_float(value) for name, value in metrics.compute().items()}


@dataclass(frozen=True)
class DetectionTask:
    """Object detection with torchvision detectors: the model computes its own losses in
    training mode and returns boxes in evaluation mode. Dataset class c is model label c + 1.

    Metrics: COCO mAP through torchmetrics with the pycocotools backend, on boxes in the
    original image coordinates (up to 100 detections an image), named mAP, mAP_50, mAP_75;
    the validation loss is the sum of the detector's losses, as in training.
    """

    num_classes: int
    task_type: ClassVar[str] = "object_detection"

    @property
    def main_metric(self) -> str:
        return main_metric(self.task_type)

    def to_device(self, inputs: list, targets: list, device: torch.device,
                  channels_last: bool = False) -> tuple[list, list]:
        images = [image.to(device, non_blocking=True) for image in inputs]
        moved = [{"boxes": t["boxes"].as_subclass(torch.Tensor).to(device).float(), "labels": (t["labels"] + 1).to(device),
                  "orig_boxes": t["orig_boxes"], "orig_size": t["orig_size"], "image_id": t["image_id"]}
                 for t in targets]
        return images, moved

    def count(self, inputs: list) -> int:
        return len(inputs)

    def train_loss(self, model: nn.Module, inputs: list, targets: list) -> torch.Tensor:
        losses = model(inputs, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        return sum(losses.values())

    def eval_batch(self, model: nn.Module, inputs: list, targets: list, metrics: nn.Module,
                   predictions: list | None = None) -> torch.Tensor:
        """Updates mAP with one batch; returns the batch's loss times its image count.
        With predictions, appends (image_id, boxes xyxy, scores, labels) in original pixels."""
        loss_sum = self.validation_loss(model, inputs, targets) * len(inputs)
        outputs = model(inputs)
        preds, truths = [], []
        for image, output, target in zip(inputs, outputs, targets):
            width, height = target["orig_size"]
            scale = torch.tensor([width / image.shape[-1], height / image.shape[-2]] * 2, device=image.device)
            boxes = (output["boxes"].float() * scale).cpu()
            scores, labels = output["scores"].float().cpu(), output["labels"].cpu() - 1
            preds.append({"boxes": boxes, "scores": scores, "labels": labels})
            truths.append({"boxes": target["orig_boxes"].float(), "labels": target["labels"].cpu() - 1})
            if predictions is not None:
                predictions.append((target["image_id"], boxes, scores, labels))
        metrics.update(preds, truths)
        return loss_sum

    @staticmethod
    def validation_loss(model: nn.Module, inputs: list, targets: list) -> torch.Tensor:
        """The detector's training losses on a batch, without changing the model: torchvision
        detectors compute losses only in training mode, so batch norms stay in evaluation mode
        (running statistics, not updated), and the proposal sampling draws from a fixed seed that
        leaves the global random state alone."""
        modes = {module: module.training for module in model.modules()}
        model.train()
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        devices = [inputs[0].device] if inputs and inputs[0].device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(0)
                losses = model(inputs, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        finally:
            for module, training in modes.items():
                module.train(training)
        return sum(losses.values()).float()

    def metrics(self) -> nn.Module:
        from torchmetrics.detection import MeanAveragePrecision

        return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")

    def compute(self, metrics: nn.Module) -> dict[str, float | None]:
        values = metrics.compute()
        return {"mAP": to_float(values["map"]), "mAP_50": to_float(values["map_50"]),
                "mAP_75": to_float(values["map_75"])}


def make_task(task_type: str, num_classes: int) -> ClassificationTask | DetectionTask:
    """The task of a task type, for a dataset of num_classes classes."""
    if task_type == "object_detection":
        return DetectionTask(num_classes)
    return ClassificationTask(task_type == "multilabel_classification", num_classes)


def to_float(value: torch.Tensor | float) -> float | None:
    """A metric as a JSON-safe float (None where it is undefined, e.g. AP of an absent class)."""
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value
