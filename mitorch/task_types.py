"""The task types and the names of the metrics each one reports (the metrics contract).

Imports nothing heavy: miquery, misubmit and the viewer read these names without torch.
"""
from __future__ import annotations

from collections.abc import Iterable

TASK_TYPES = ("multiclass_classification", "multilabel_classification", "object_detection")
# What a training records for each task type (per epoch and final), besides num_samples.
METRICS = {"multiclass_classification": ("top1_accuracy", "top5_accuracy", "average_precision", "loss"),
           "multilabel_classification": ("accuracy_50", "average_precision", "loss"),
           "object_detection": ("mAP_50", "mAP_75", "mAP", "loss")}
# Recorded beside the metrics but not a metric: the number of images evaluated.
NOT_METRICS = ("num_samples",)
# What every training measures of its trained model, whatever its task (mitorch.engine.costs),
# beside its final metrics: better when lower, as a search objective or constraint.
COST_METRICS = ("num_parameters", "macs", "weights_mb", "latency_ms_b1", "latency_ms_batch")
# The one metric that stands for how good a training of each task type is.
_MAIN_METRIC = {"multiclass_classification": "top1_accuracy", "multilabel_classification": "accuracy_50",
                "object_detection": "mAP"}
MAIN_METRICS = tuple(_MAIN_METRIC.values())


def main_metric(task_type: str) -> str:
    """The main metric of a task type: what best.pt and search objectives default to."""
    return _MAIN_METRIC[task_type]


def in_display_order(metric_names: Iterable[str]) -> list[str]:
    """Metric names in the order tables show them: main metrics first, then the others by name,
    loss last (the viewer takes a row's first metric as the one to show alone)."""
    return sorted(metric_names, key=lambda name: (name not in MAIN_METRICS, name == "loss", name))


__all__ = ["COST_METRICS", "MAIN_METRICS", "METRICS", "TASK_TYPES", "in_display_order", "main_metric"]


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of the metric is the better one (a loss, a cost metric); every
    other metric (accuracies, average precisions) is better when higher."""
    return metric == "loss" or metric.endswith("_loss") or metric in COST_METRICS


def direction(metric: str) -> str:
    """Optuna's word for which way a metric is better: minimize or maximize."""
    return "minimize" if lower_is_better(metric) else "maximize"


def is_better(value: float, best: float | None, maximize: bool) -> bool:
    """Whether value beats best (None: nothing yet) in the given direction."""
    return best is None or (value > best if maximize else value < best)
