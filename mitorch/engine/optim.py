"""Parameter groups for optimizers."""
from __future__ import annotations

from torch import nn

# Embeddings that weight decay would pull towards zero for no gain, by name (as torchvision's
# reference transformer_embedding_decay and timm's no_weight_decay() exclude them).
NO_DECAY_NAMES = ("pos_embed", "pos_embedding", "position_embedding", "cls_token", "class_token", "dist_token",
                  "reg_token", "relative_position_bias_table", "absolute_pos_embed")


def param_groups(model: nn.Module) -> list[dict]:
    """Two groups: weights with decay, and the parameters without.

    No weight decay on parameters with fewer than two dimensions (biases, norm scales and
    shifts), on position embeddings, class tokens and relative-position tables (by name), and
    on what the model's own no_weight_decay() names (timm models); the first group keeps the
    optimizer's own weight_decay.
    """
    own = getattr(model, "no_weight_decay", None)
    named = set(own()) if callable(own) else set()
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        parts = name.split(".")
        excluded = (parameter.ndim < 2 or parts[-1] in NO_DECAY_NAMES
                    or any(name == n or name.startswith(n + ".") for n in named))
        (no_decay if excluded else decay).append(parameter)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
