"""Pretrained weights by name (model.pretrained=true), through torch's hub cache, offline."""
from __future__ import annotations

import os
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from torchvision import models

import mitorch
from mitorch import build


def _cached_file(torch_home: Path, weights) -> Path:
    return torch_home / "hub" / "checkpoints" / os.path.basename(weights.url)


def test_a_classifier_starts_from_the_cached_imagenet_weights_with_a_new_head(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    file = _cached_file(tmp_path / "torch", models.ResNet34_Weights.DEFAULT)
    file.parent.mkdir(parents=True)
    imagenet = models.resnet34(num_classes=1000)
    with torch.no_grad():
        imagenet.conv1.weight.fill_(0.125)
        imagenet.layer4[2].bn2.running_mean.fill_(3.0)
    torch.save(imagenet.state_dict(), file)

    def offline(*args, **kwargs):
        raise AssertionError("a cached file must not be downloaded again")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    cfg = mitorch.compose(["model=resnet", "model.depth=34", "model.pretrained=true"])
    model = build.build_model(cfg, num_classes=5)
    assert torch.all(model.conv1.weight == 0.125) and torch.all(model.layer4[2].bn2.running_mean == 3.0)
    assert model.fc.out_features == 5
    fresh = build.build_model(mitorch.compose(["model=resnet", "model.depth=34"]), num_classes=5)
    assert not torch.all(fresh.conv1.weight == 0.125)  # without pretrained: random weights


def test_offline_and_not_cached_is_one_line_naming_the_file_and_where_it_goes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url, dst, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    cfg = mitorch.compose(["model=mobilenet_v3", "model.size=small", "model.pretrained=true"])
    with pytest.raises(mitorch.ConfigError) as error:
        build.build_model(cfg, num_classes=3)
    file = _cached_file(tmp_path / "torch", models.MobileNet_V3_Small_Weights.DEFAULT)
    message = str(error.value)
    assert "\n" not in message and f"pretrained weights {file.name} are not in the torch hub cache" in message
    assert f"put the file at {file}" in message and "name resolution" in message and "-w" in message
    with pytest.raises(mitorch.ConfigError, match="pretrained weights are for image_size=224"):
        build.build_model(mitorch.compose(["model=vit_b_16", "image_size=32", "model.pretrained=true"]), 3)


def test_a_detector_starts_from_cached_coco_weights_or_an_imagenet_backbone(tmp_path: Path, monkeypatch) -> None:
    from torchvision.models import detection

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    coco = detection.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None, num_classes=91)
    with torch.no_grad():
        coco.rpn.head.conv[0][0].weight.fill_(0.5)
    torch.save(coco.state_dict(), _cached_file(tmp_path / "torch",
                                               detection.FasterRCNN_MobileNet_V3_Large_FPN_Weights.DEFAULT))
    imagenet = models.resnet18()
    with torch.no_grad():
        imagenet.layer1[0].conv1.weight.fill_(0.25)
    torch.save(imagenet.state_dict(), _cached_file(tmp_path / "torch", models.ResNet18_Weights.DEFAULT))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(URLError("offline")))
    detector = ["task_type=object_detection", "model=fasterrcnn", "image_size=64"]

    model = build.build_model(mitorch.compose([*detector, "model.backbone=mobilenet_v3_large",
                                               "model.pretrained=true"]), num_classes=3)
    assert torch.all(model.rpn.head.conv[0][0].weight == 0.5)
    assert model.roi_heads.box_predictor.cls_score.out_features == 4  # 3 classes and the background
    model = build.build_model(mitorch.compose([*detector, "model.pretrained_backbone=true"]), num_classes=3)
    assert torch.all(model.backbone.body.layer1[0].conv1.weight == 0.25)
    with pytest.raises(mitorch.ConfigError, match="no COCO weights for fasterrcnn with backbone resnet18"):
        build.build_model(mitorch.compose([*detector, "model.pretrained=true"]), num_classes=3)
