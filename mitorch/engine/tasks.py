"""What differs between task types: the loss, the metrics, and the reported metric names."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchmetrics
from torch import nn
from torch.nn import functional as F


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
    def main_metric(self) -> str:
        return "accuracy_50" if self.multilabel else "top1_accuracy"


def to_float(value: torch.Tensor | float) -> float | None:
    """A metric as a JSON-safe float (None where it is undefined, e.g. AP of an absent class)."""
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value
