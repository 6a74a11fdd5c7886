"""image_size=null: the size comes from the pretrained weights, the weights trained, or the data."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

import mitorch
from mitorch.data.sizes import choose, pretrained_input_size, size_from_images


def _folder(root: Path, sizes: list[tuple[int, int]]) -> Path:
    for split in ("train", "val"):
        for c in range(2):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, (w, h) in enumerate(sizes):
                Image.new("RGB", (w, h), (60 + 150 * c, 90, 30 * i % 255)).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("sizes, detection, expected", [
    ([(40, 30)] * 3 + [(200, 200)], False, 64),       # median 40 -> 64: small data keeps its scale
    ([(20, 16)] * 5, False, 32),                         # below the range: 32
    ([(500, 375)] * 5, False, 224),                      # above: 224
    ([(96, 96), (100, 60), (90, 90)], False, 96),
    ([(96, 96)] * 3, True, 96),
    ([(30, 30)] * 3, True, 64),                          # detection keeps at least 64
    ([(1280, 960)] * 3, True, 512),
])
def test_the_median_longer_side_rounded_up_within_the_task_range(tmp_path: Path, sizes, detection, expected) -> None:
    paths = []
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    size, why = size_from_images(paths, sizes if detection else None, detection)
    assert size == expected and f"of {len(sizes)} training images" in why


def test_pretrained_weights_give_their_own_input_size() -> None:
    assert pretrained_input_size(mitorch.compose(["model=resnet", "model.pretrained=true"]).model) == 224
    assert pretrained_input_size(mitorch.compose(["model=efficientnet", "model.variant=b2",
                                                  "model.pretrained=true"]).model) == 260
    assert pretrained_input_size(mitorch.compose(["model=timm", "model.name=vit_small_patch16_384",
                                                  "model.pretrained=true"]).model) == 384
    assert pretrained_input_size(mitorch.compose(["model=resnet"]).model) is None
    cfg = mitorch.compose(["model=resnet", "model.pretrained=true", "data.train=x", "data.val=y"])
    assert choose(cfg, None, None, None, 224) == (224, "the input size of the model's pretrained weights")
    assert choose(cfg, None, {"image_size": 96}, None, 224) == (96, "the size the weights were trained at")


def test_a_run_on_small_images_trains_and_evaluates_at_their_scale(tmp_path: Path, capfd) -> None:
    data = _folder(tmp_path / "data", [(48, 40), (40, 48), (44, 44)])
    common = [f"data.train={data / 'train'}", f"data.val={data / 'val'}", "batch_size=4", "data.num_workers=0",
              "max_epochs=1"]
    mitorch.train(mitorch.compose([*common, f"output={tmp_path / 'w.pt'}"]))
    err = capfd.readouterr().err
    assert ("image_size=64: the median longer side of 6 training images is 48 px; rounded up to a multiple of 32 "
            "within [32, 224]") in err
    assert torch.load(tmp_path / "w.pt", weights_only=True)["config"]["image_size"] == 64
    metrics = mitorch.evaluate(mitorch.compose([*common, f"weights={tmp_path / 'w.pt'}"]))
    assert metrics["num_samples"] == 6
    explicit = mitorch.compose([*common, "image_size=32", "max_epochs=1"])
    mitorch.train(explicit)
    assert "image_size=" not in capfd.readouterr().err  # an explicit size wins, silently
