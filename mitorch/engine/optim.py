"""Parameter groups for optimizers."""
from __future__ import annotations

from torch import nn


def param_groups(model: nn.Module) -> list[dict]:
    """Two groups: weights with decay, and biases and normalization parameters without.

    Parameters with fewer than two dimensions (biases, norm scales and shifts) get no
    weight decay; the first group keeps the optimizer's own weight_decay.
    """
    decay, no_decay = [], []
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
