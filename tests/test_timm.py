"""The timm zoo: model=timm model.name=..., pretrained files, and no weight decay where timm says."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mitorch
from mitorch import build
from mitorch.engine.optim import param_groups
from tests.helpers import make_text_dataset, run


def test_any_timm_architecture_by_name_with_its_head_sized_to_the_data() -> None:
    model = build.build_model(mitorch.compose(["model=timm", "model.name=resnet18"]), num_classes=7)
    assert model.get_classifier().out_features == 7
    with pytest.raises(mitorch.ConfigError, match="unknown timm model 'convnext_nanoo'; close matches: convnext_nano"):
        build.build_model(mitorch.compose(["model=timm", "model.name=convnext_nanoo"]), num_classes=7)


def test_a_local_pretrained_file_is_loaded_and_its_classifier_replaced(tmp_path: Path) -> None:
    import timm

    source = timm.create_model("resnet18", num_classes=1000)
    with torch.no_grad():
        source.conv1.weight.fill_(0.25)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    cfg = mitorch.compose(["model=timm", "model.name=resnet18", f"model.pretrained_file={tmp_path / 'resnet18.pth'}"])
    model = build.build_model(cfg, num_classes=4)
    assert torch.all(model.conv1.weight == 0.25) and model.get_classifier().out_features == 4
    missing = mitorch.compose(["model=timm", "model.name=resnet18", f"model.pretrained_file={tmp_path / 'no.pth'}"])
    with pytest.raises(mitorch.ConfigError, match="no.pth does not exist"):
        build.build_model(missing, num_classes=4)


def test_no_weight_decay_on_what_timm_names_nor_on_torchvision_embeddings() -> None:
    for overrides, names in ((["model=timm", "model.name=vit_tiny_patch16_224"], {"pos_embed", "cls_token"}),
                             (["model=vit_b_16", "image_size=224"], {"class_token", "encoder.pos_embedding"})):
        model = build.build_model(mitorch.compose(overrides), num_classes=3)
        decay, no_decay = param_groups(model)
        parameters = dict(model.named_parameters())
        assert all(any(p is parameters[n] for p in no_decay["params"]) for n in names)
        assert not any(p is parameters[n] for n in names for p in decay["params"])
        assert all(p.ndim >= 2 for p in decay["params"]) and no_decay["weight_decay"] == 0.0


@pytest.mark.slow
def test_mitrain_and_mitest_with_a_timm_model(tmp_path: Path) -> None:
    data = make_text_dataset(tmp_path / "data", num_train=16, num_val=6)
    common = [f"data.train={data.train}", f"data.val={data.val}", "image_size=32", "batch_size=8",
              "data.num_workers=0", "model=timm", "model.name=resnet18"]
    trained = run("mitrain", *common, "-d", "-o", "w.pt", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    tested = run("mitest", *common, "-w", "w.pt", cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr
    assert tested.metrics["num_samples"] == 6 and set(tested.metrics) == set(trained.metrics)
