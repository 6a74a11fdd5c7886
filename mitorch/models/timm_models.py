"""Any timm architecture by name (`model=timm model.name=...`), its head sized to the dataset.

timm is imported when such a model is built, never by the commands that only queue or show.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from mitorch.errors import ConfigError


def timm_model(num_classes: int, name: str, pretrained: bool = False, pretrained_file: str | None = None,
               drop_path_rate: float | None = None) -> nn.Module:
    """A timm model.

    Args:
        name: a timm architecture, e.g. convnext_nano, resnet18, vit_tiny_patch16_224.
        pretrained: start from the weights timm names for it (downloaded through timm into the
            Hugging Face hub cache, reused from there).
        pretrained_file: start from this local file of the architecture's weights instead
            (timm's mechanism: the classifier is replaced when the class count differs).
        drop_path_rate: stochastic depth, for the architectures that have it.

    Raises:
        ConfigError: an unknown name (with close matches), a missing file, weights that cannot
            be had offline.
    """
    import timm

    if not timm.is_model(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"close matches: {', '.join(close)}" if close else "see timm.list_models()"
        raise ConfigError(f"unknown timm model {name!r}; {hint}")
    kwargs = {"num_classes": num_classes}
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    if pretrained_file is not None:
        if not Path(pretrained_file).is_file():
            raise ConfigError(f"model.pretrained_file {pretrained_file} does not exist; give a weights file of "
                              f"{name}")
        kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained_file)}
    try:
        return timm.create_model(name, pretrained=pretrained or pretrained_file is not None, **kwargs)
    except (OSError, RuntimeError, ValueError) as e:
        if not (pretrained or pretrained_file):
            raise
        reason = " ".join(str(e).split())[:200]
        raise ConfigError(f"cannot load the pretrained weights of timm model {name} ({reason}); with no network, "
                          "put them in the Hugging Face hub cache (HF_HOME) or give model.pretrained_file=PATH") \
            from None
