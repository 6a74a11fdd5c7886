"""What a trained model costs to run: its size, its multiply-accumulates and its latency.

Measured once after training, on the main process, with the model as it was validated (the
weight average when there is one), in eval mode on the training's device and in its precision
(autocast where the training used it). Every name is a metric of the training, beside its
validation metrics, so a search job can take it as an objective or a constraint:

    num_parameters    the model's parameters, trainable or not
    macs              multiply-accumulates of one forward pass of one image_size image
                      (torch.utils.flop_counter's FLOPs of convolutions and matrix products / 2;
                      a detector's proposal sampling and NMS count nothing)
    weights_mb        the model's state dict (parameters and buffers), in MB of 10^6 bytes
    latency_ms_b1     median time of a forward pass of one image, in ms
    latency_ms_batch  median time of a forward pass of batch_size images, in ms

A latency is the median of up to 10 timed passes after 2 warm-up passes; the timed passes stop
after 3 s (at least 3 are timed), so a large model on a CPU adds seconds, not minutes. Inputs are
random images of the training's image_size, the same each run. `cost_metrics: false` skips it all.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mitorch.task_types import COST_METRICS

_WARMUP, _TIMED, _BUDGET_S = 2, 10, 3.0


def measure_costs(model: nn.Module, image_size: int, batch_size: int, device: torch.device,
                  detection: bool, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """The cost metrics (mitorch.task_types.COST_METRICS) of a trained model; see the module's docstring.

    Args:
        detection: the model takes a list of images (torchvision's detectors), not a batch tensor.
        dtype: the autocast dtype the model was validated in; None: full precision.
    """
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 3, image_size, image_size, generator=generator).to(device)

    def run(count: int) -> Callable[[], Any]:
        batch = list(images[:count]) if detection else images[:count]
        return lambda: model(batch)

    try:
        with torch.inference_mode(), _autocast(device, dtype):
            costs = {
                "num_parameters": sum(p.numel() for p in model.parameters()),
                "macs": _macs(run(1)),
                "weights_mb": round(sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6, 3),
                "latency_ms_b1": _latency_ms(run(1), device),
                "latency_ms_batch": _latency_ms(run(batch_size), device),
            }
    finally:
        model.train(was_training)
    return costs


def _macs(forward: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        forward()
    return int(counter.get_total_flops() // 2)


def _latency_ms(forward: Callable[[], Any], device: torch.device) -> float:
    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(_WARMUP):
        forward()
    synchronize()
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < _TIMED and (len(times) < 3 or time.perf_counter() - began < _BUDGET_S):
        start = time.perf_counter()
        forward()
        synchronize()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 3)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    import contextlib

    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)
