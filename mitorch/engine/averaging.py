"""Weight averaging: an exponential moving average per update, or SWA over the last epochs."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightAverage:
    """An averaged copy of a model.

    Args:
        kind: "ema" (updated after every optimizer update with `decay`, batch-norm buffers
            averaged too) or "swa" (an equal average of the weights at the end of each epoch
            from `start_epoch` on; batch-norm statistics recomputed at the end).
    """

    def __init__(self, model: nn.Module, kind: str, decay: float = 0.9998, start_epoch: int = 1) -> None:
        self.kind = kind
        self.start_epoch = start_epoch
        if kind == "ema":
            self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        else:
            self.averaged = AveragedModel(model)

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    def after_update(self, model: nn.Module) -> None:
        if self.kind == "ema":
            self.averaged.update_parameters(model)

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        if self.kind == "swa" and epoch >= self.start_epoch:
            self.averaged.update_parameters(model)

    @property
    def ready(self) -> bool:
        """Whether the average holds weights yet (SWA starts late)."""
        return self.kind == "ema" or int(self.averaged.n_averaged) > 0

    @torch.no_grad()
    def finish(self, loader: Iterable, device: torch.device, max_batches: int | None = None) -> None:
        """SWA: recomputes batch-norm statistics of the averaged weights on the training data."""
        if self.kind != "swa":
            return
        norms = [m for m in self.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        momenta = {}
        for norm in norms:
            norm.reset_running_stats()
            momenta[norm] = norm.momentum
            norm.momentum = None  # a cumulative average over the whole pass
        self.module.train()
        for batch, (inputs, _) in enumerate(loader, 1):
            self.module(inputs.to(device))
            if max_batches is not None and batch >= max_batches:
                break
        for norm, momentum in momenta.items():
            norm.momentum = momentum

    def state_dict(self) -> dict:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.averaged.load_state_dict(state)
