"""Object detection: both formats, bad boxes, box-aware augmentation, every detector option,
COCO-exact mAP (against pycocotools on the files mitest writes), and mipredict."""
from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from mitorch.config import compose
from mitorch.data.coco import write_coco
from mitorch.data.detection import DetectionDataset, collate, load_detection_index
from mitorch.data.presets import DetectionTrainPreset
from mitorch.engine.tasks import DetectionTask
from mitorch.errors import ConfigError, DataError
from tests.helpers import COLOURS, run, validation_metrics

CLASSES = ["red", "green"]


def _scene(rng: np.random.Generator, size: int, count: int,
           object_sizes: tuple[int, int] | None = None) -> tuple[bytes, list[tuple[int, list[float]]]]:
    """A noisy image with `count` filled rectangles, red for class 0 and green for class 1, their
    sides drawn from object_sizes (default: a quarter to half the image)."""
    low, high = object_sizes or (size // 4, size // 2)
    pixels = rng.integers(0, 50, size=(size, size, 3)).astype(np.uint8)
    objects = []
    for _ in range(count):
        label = int(rng.integers(len(CLASSES)))
        w, h = rng.integers(low, high, size=2)
        x, y = rng.integers(0, size - w), rng.integers(0, size - h)
        pixels[y:y + h, x:x + w] = COLOURS[label]
        objects.append((label, [float(x), float(y), float(x + w), float(y + h)]))
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue(), objects


def make_detection_dataset(root: Path, fmt: str = "text", num_train: int = 8, num_val: int = 8, size: int = 64,
                           seed: int = 0, val_is_train: bool = False, max_objects: int = 2,
                           object_sizes: tuple[int, int] | None = None) -> tuple[Path, Path]:
    """train/val as text lists (images in a zip, label files plain) or as COCO JSON with
    category ids 7 (green) and 3 (red), images as files. The first image of each split has no
    boxes, the others 1 to max_objects."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    scenes = {split: [_scene(rng, size, 0 if i == 0 else int(rng.integers(1, max_objects + 1)), object_sizes)
                      for i in range(count)]
              for split, count in (("train", num_train), ("val", num_val))}
    if val_is_train:
        scenes["val"] = scenes["train"]
    for split, items in scenes.items():
        if fmt == "text":
            (root / "labels").mkdir(exist_ok=True)
            lines = []
            with zipfile.ZipFile(root / f"{split}.zip", "w") as archive:
                for i, (data, objects) in enumerate(items):
                    archive.writestr(f"{i}.png", data)
                    label_file = root / "labels" / f"{split}_{i}.txt"
                    label_file.write_text("".join(f"{c} {' '.join(map(str, box))}\n" for c, box in objects))
                    lines.append(f"{split}.zip@{i}.png labels/{split}_{i}.txt")
            (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
        else:
            (root / "images").mkdir(exist_ok=True)
            images, annotations = [], []
            for i, (data, objects) in enumerate(items):
                (root / "images" / f"{split}_{i}.png").write_bytes(data)
                images.append({"id": 100 + i, "file_name": f"images/{split}_{i}.png", "width": size, "height": size})
                for c, (x0, y0, x1, y1) in objects:
                    annotations.append({"id": len(annotations) + 1, "image_id": 100 + i, "category_id": (3, 7)[c],
                                        "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                                        "iscrowd": 0})
            categories = [{"id": 7, "name": "green"}, {"id": 3, "name": "red"}]
            (root / f"{split}.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                             "categories": categories}))
    suffix = ".txt" if fmt == "text" else ".json"
    return root / f"train{suffix}", root / f"val{suffix}"


# -- formats -----------------------------------------------------------------------------------


def test_text_and_coco_formats_load_the_same_boxes(tmp_path: Path) -> None:
    text_train, _ = make_detection_dataset(tmp_path / "text", "text")
    coco_train, _ = make_detection_dataset(tmp_path / "coco", "coco")
    text, coco = load_detection_index(str(text_train)), load_detection_index(str(coco_train))
    assert text.class_names == coco.class_names == CLASSES  # COCO categories in id order: 3 red, 7 green
    assert coco.category_ids == [3, 7] and text.category_ids == [1, 2]
    assert text.boxes == coco.boxes and text.labels == coco.labels
    assert text.boxes[0] == [] and all(text.boxes[1:])  # a negative image is kept
    assert coco.image_ids[:2] == [100, 101] and text.sizes[0] == (64, 64)


def test_bad_boxes_are_clipped_or_dropped_and_counted(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = tmp_path / "a.png"
    Image.new("RGB", (40, 30)).save(image)
    (tmp_path / "a.txt").write_text("0 -5 2 10 12.5\n"      # clipped at the left
                                    "1 30 20 55 45\n"       # clipped right and bottom
                                    "0 50 5 60 9\n"         # outside: dropped
                                    "1 20 10 10 20\n"       # xmax < xmin: dropped, not swapped
                                    "0 5 5 5 9\n")          # no width: dropped
    (tmp_path / "list.txt").write_text("a.png a.txt\n")
    index = load_detection_index(str(tmp_path / "list.txt"))
    assert index.boxes == [[[0.0, 2.0, 10.0, 12.5], [30.0, 20.0, 40.0, 30.0]]]
    assert index.labels == [[0, 1]]
    assert "2 box(es) clipped to their image, 3 dropped" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [("0 1 2 3\n", "a.txt line 1: expected '<class> <xmin>"),
                                              ("0 1 2 3 4\nred 1 2 3 4\n", "a.txt line 2"),
                                              ("-1 1 2 3 4\n", "class -1 is negative")])
def test_a_label_file_that_does_not_parse_names_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text(content)
    (tmp_path / "list.txt").write_text("a.png a.txt\n")
    with pytest.raises(DataError, match=message):
        load_detection_index(str(tmp_path / "list.txt"))


def test_augmentation_moves_boxes_with_the_image(tmp_path: Path) -> None:
    flip = DetectionTrainPreset(image_size=64, hflip_prob=1.0, photometric_prob=0, zoom_out_prob=0, iou_crop=False)
    image = tv_tensors.Image(torch.zeros(3, 32, 64, dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[4.0, 2.0, 20.0, 10.0]]), format="XYXY", canvas_size=(32, 64))
    out, target = flip(image, {"boxes": boxes, "labels": torch.tensor([1])})
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    # Flipped (x -> 64 - x), then y doubled by the resize to 64x64.
    assert target["boxes"].tolist() == [[44.0, 4.0, 60.0, 20.0]]
    full = DetectionTrainPreset(image_size=48)
    for n in (0, 1):  # with and without boxes, every random step
        for _ in range(10):
            some = tv_tensors.wrap(boxes[:n], like=boxes)
            out, target = full(image, {"boxes": some, "labels": torch.tensor([1])[:n]})
            assert out.shape == (3, 48, 48) and target["boxes"].shape[1] == 4


def test_batches_of_negative_images_train(tmp_path: Path) -> None:
    train, _ = make_detection_dataset(tmp_path, "text")
    cfg = compose(["task_type=object_detection", "image_size=64"])
    from mitorch.build import build_model, build_transforms

    dataset = DetectionDataset(load_detection_index(str(train)), build_transforms(cfg)[0])
    images, targets = collate([dataset[0], dataset[0], dataset[1]])
    assert [t["boxes"].shape[0] for t in targets][:2] == [0, 0] and targets[2]["boxes"].shape[0] > 0
    task = DetectionTask(2)
    model = build_model(cfg, 2)
    model.train()
    for batch in ((images[:2], targets[:2]), (images, targets)):  # all negative, then mixed
        inputs, moved = task.to_device(*batch, torch.device("cpu"))
        loss = task.train_loss(model, inputs, moved)
        loss.backward()
        assert torch.isfinite(loss)


def test_validation_loss_leaves_the_model_and_the_random_state_alone(tmp_path: Path) -> None:
    from mitorch.build import build_model, build_transforms

    train, _ = make_detection_dataset(tmp_path, "text")
    cfg = compose(["task_type=object_detection", "image_size=64"])
    dataset = DetectionDataset(load_detection_index(str(train)), build_transforms(cfg)[1])
    task = DetectionTask(2)
    inputs, targets = task.to_device(*collate([dataset[i] for i in range(4)]), torch.device("cpu"))
    model = build_model(cfg, 2).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    random_state = torch.get_rng_state()
    with torch.no_grad():
        first = task.validation_loss(model, inputs, targets)
        second = task.validation_loss(model, inputs, targets)
    assert first.item() == second.item() > 0
    assert not any(module.training for module in model.modules())
    assert torch.equal(torch.get_rng_state(), random_state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


DETECTORS = [["model=fasterrcnn"], ["model=fasterrcnn", "model.backbone=mobilenet_v3_large"],
             ["model=fasterrcnn", "model.backbone=resnet50"], ["model=retinanet"], ["model=fcos"],
             ["model=fcos", "model.backbone=resnet18"], ["model=ssdlite"]]


@pytest.mark.parametrize("choice", DETECTORS, ids=lambda c: "-".join(o.split("=")[1] for o in c))
def test_every_detector_option_instantiates_and_predicts(choice: list[str]) -> None:
    from mitorch.build import build_model, build_transforms

    for augmentation in ("detection", "detection_val"):
        cfg = compose(["task_type=object_detection", "image_size=64", f"augmentation={augmentation}", *choice])
        build_transforms(cfg)
    model = build_model(cfg, 3).eval()
    with torch.no_grad():
        output = model([torch.rand(3, 48, 80)])[0]
    assert set(output) == {"boxes", "scores", "labels"} and len(output["boxes"]) <= 100


def test_task_and_model_must_fit() -> None:
    with pytest.raises(ConfigError, match="object_detection needs a detector"):
        compose(["task_type=object_detection", "model=resnet"])
    with pytest.raises(ConfigError, match="is a detector; set task_type=object_detection"):
        compose(["model=fcos"])
    with pytest.raises(ConfigError, match="box-aware augmentation"):
        compose(["task_type=object_detection", "augmentation=standard"])
    cfg = compose(["task_type=object_detection"])
    assert cfg.model._target_ == "mitorch.models.fasterrcnn" and cfg.optimizer.lr == 0.02
    assert cfg.gradient_clip_norm == 10 and cfg.lr_scheduler.warmup_steps == 10
    assert compose(["task_type=object_detection", "optimizer=adam"]).optimizer.lr == 1e-3
    chosen = compose(["task_type=object_detection", "gradient_clip_norm=null", "lr_scheduler=linear"])
    assert chosen.gradient_clip_norm is None and chosen.lr_scheduler.warmup_steps == 0


@pytest.mark.parametrize("factory", ["fasterrcnn", "fcos"])
def test_resnet18_backbones_normalize_yet_load_weights_saved_with_frozen_norms(factory: str) -> None:
    # Until the ResNet-18 backbones normalized, their norms were frozen at the identity.
    import functools

    from torchvision.ops.misc import FrozenBatchNorm2d

    import mitorch.models.detection as detectors

    make = functools.partial(getattr(detectors, factory), 2, image_size=64, backbone="resnet18")
    model = make()
    norms = [m for m in model.backbone.body.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.weight.requires_grad for m in norms)
    build_backbone = detectors._resnet18_fpn
    try:
        detectors._resnet18_fpn = functools.partial(detectors.resnet_fpn_backbone, backbone_name="resnet18",
                                                     weights=None, trainable_layers=5, norm_layer=FrozenBatchNorm2d)
        torch.manual_seed(0)
        frozen = make().eval()
    finally:
        detectors._resnet18_fpn = build_backbone
    from mitorch.models.weights import load_state

    assert load_state(model, frozen.state_dict(), "old.pt", replace_head=False) is False
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected, got = frozen.backbone(image), model.eval().backbone(image)
    assert all(torch.allclose(expected[k], got[k], rtol=1e-4, atol=1e-5) for k in expected)


def test_different_class_counts_replace_the_class_dependent_layers() -> None:
    from mitorch.models import fasterrcnn, retinanet
    from mitorch.models.weights import load_state

    for factory in (fasterrcnn, retinanet):
        coco_like = factory(90, image_size=64).state_dict()
        model = factory(2, image_size=64)
        assert load_state(model, coco_like, "coco.pth", replace_head=True)
        with pytest.raises(DataError, match="do not fit the model"):
            load_state(model, coco_like, "coco.pth", replace_head=False)


# -- COCO-exact mAP ----------------------------------------------------------------------------


class FixedDetector(torch.nn.Module):
    """Answers with given detections when evaluating, and a constant loss when training."""

    def __init__(self, outputs: list[dict]) -> None:
        super().__init__()
        self.outputs = outputs

    def forward(self, images: list, targets: list | None = None):
        return {"loss": torch.tensor(0.5)} if self.training else self.outputs


def _pycocotools_map(folder: Path) -> list[float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    truth = COCO(str(folder / "ground_truth.json"))
    results = truth.loadRes(str(folder / "predictions.json"))
    evaluation = COCOeval(truth, results, "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return [float(v) for v in evaluation.stats[:3]]  # mAP, mAP_50, mAP_75


@pytest.mark.parametrize("fmt", ["text", "coco"])
def test_map_equals_pycocotools_on_the_written_files(tmp_path: Path, fmt: str) -> None:
    _, val = make_detection_dataset(tmp_path, fmt, num_val=12, size=80)
    index = load_detection_index(str(val))
    task, rng = DetectionTask(2), np.random.default_rng(1)
    metrics, predictions = task.metrics(), []
    for i in range(len(index)):
        truth = torch.tensor(index.boxes[i]).reshape(-1, 4)
        # Imperfect: jittered boxes, some with the wrong class, and false positives.
        boxes = torch.cat([truth + torch.from_numpy(rng.normal(0, 4, truth.shape)).float(),
                           torch.tensor([[5.0, 5.0, 30.0, 40.0]])]).clamp(0, 80)
        labels = torch.tensor(index.labels[i] + [0]) if index.labels[i] else torch.tensor([1])
        labels = torch.where(torch.from_numpy(rng.random(len(labels)) < 0.2), 1 - labels, labels)
        scores = torch.from_numpy(rng.random(len(labels))).float()
        model_output = [{"boxes": boxes * 0.8, "scores": scores, "labels": labels + 1}]  # on a 64 px input
        target = [{"boxes": truth * 0.8, "orig_boxes": truth, "orig_size": index.sizes[i],
                   "labels": torch.tensor(index.labels[i]) + 1,
                   "image_id": index.image_ids[i]}]
        task.eval_batch(FixedDetector(model_output).eval(), [torch.zeros(3, 64, 64)], target, metrics, predictions)
    ours = task.compute(metrics)
    write_coco(tmp_path / "out", index, predictions)
    reference = _pycocotools_map(tmp_path / "out")
    assert 0.05 < ours["mAP_50"] < 0.95  # imperfect, and not degenerate
    assert [ours["mAP"], ours["mAP_50"], ours["mAP_75"]] == pytest.approx(reference, abs=1e-4)
    written = json.loads((tmp_path / "out" / "ground_truth.json").read_text())
    assert {c["id"] for c in written["categories"]} == set(index.category_ids)
    assert len(written["images"]) == 12


def test_mipredict_boxes_come_back_in_the_original_pixels_of_non_square_images() -> None:
    from mitorch.build import build_transforms
    from mitorch.predict import Predictor

    cfg = compose(["task_type=object_detection", "image_size=64"])
    predictor = Predictor.__new__(Predictor)  # the prediction path alone, around a perfect detector
    predictor.task_type, predictor.threshold, predictor.device = cfg.task_type, None, torch.device("cpu")
    predictor.transform, predictor.class_names = build_transforms(cfg)[1], CLASSES
    for width, height in [(96, 48), (40, 80)]:
        truth = torch.tensor([[0.1 * width, 0.2 * height, 0.5 * width, 0.9 * height]])
        # The detector sees the 64x64 input and answers the box where the resize put it.
        squeezed = truth * torch.tensor([64 / width, 64 / height] * 2)
        predictor.model = lambda inputs, boxes=squeezed: [
            {"boxes": boxes, "scores": torch.ones(1), "labels": torch.tensor([2])}]
        image = Image.fromarray(np.zeros((height, width, 3), dtype=np.uint8))
        (box,) = predictor.predict(image)["boxes"]
        assert box["class"] == "green" and box["box"] == pytest.approx(truth[0].tolist(), abs=0.06)


def test_predictions_come_back_in_the_original_pixels_of_non_square_images(tmp_path: Path) -> None:
    from mitorch.build import build_transforms
    from mitorch.engine.trainer import evaluate

    # Wide and tall images, squeezed to 64x64: x and y scale by different factors, and differently per image.
    sizes = [(96, 48), (40, 80), (120, 30)]
    rng = np.random.default_rng(0)
    lines = []
    for i, (width, height) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        boxes = [(0, [0.1 * width, 0.2 * height, 0.5 * width, 0.9 * height]),
                 (1, [0.55 * width, 0.1 * height, 0.95 * width, 0.4 * height])]
        (tmp_path / f"{i}.txt").write_text("".join(f"{c} {' '.join(map(str, box))}\n" for c, box in boxes))
        lines.append(f"{i}.png {i}.txt")
    (tmp_path / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    (tmp_path / "val.txt").write_text("\n".join(lines) + "\n")
    index = load_detection_index(str(tmp_path / "val.txt"))
    assert index.sizes == sizes

    cfg = compose(["task_type=object_detection", "image_size=64"])
    dataset = DetectionDataset(index, build_transforms(cfg)[1])
    # A perfect detector: it answers each image's boxes where the resize put them, in the 64x64 input.
    outputs = [{"boxes": target["boxes"].as_subclass(torch.Tensor), "scores": torch.ones(len(target["labels"])),
                "labels": target["labels"] + 1} for _, target in (dataset[i] for i in range(len(dataset)))]
    assert not torch.allclose(outputs[0]["boxes"], torch.tensor(index.boxes[0]))
    task, predictions = DetectionTask(2), []
    metrics = [evaluate(FixedDetector([output]), [collate([dataset[i]])], task, torch.device("cpu"),
                        predictions=predictions) for i, output in enumerate(outputs)]
    assert [m["mAP"] for m in metrics] == pytest.approx([1.0] * len(sizes))

    write_coco(tmp_path / "coco", index, predictions)
    truth = json.loads((tmp_path / "coco" / "ground_truth.json").read_text())["annotations"]
    predicted = json.loads((tmp_path / "coco" / "predictions.json").read_text())
    assert len(predicted) == len(truth) == 2 * len(sizes)
    for found, expected in zip(predicted, truth):
        assert (found["image_id"], found["category_id"]) == (expected["image_id"], expected["category_id"])
        assert found["bbox"] == pytest.approx(expected["bbox"], abs=1e-3)  # [x, y, w, h] in the image's pixels
    assert _pycocotools_map(tmp_path / "coco") == pytest.approx([1.0, 1.0, 1.0])


# -- end to end through the console scripts ----------------------------------------------------

QUICK_DETECTION = ["task_type=object_detection", "image_size=64", "batch_size=4", "data.num_workers=0",
                   "model.rpn_pre_nms_top_n_train=300", "model.rpn_post_nms_top_n_train=100",
                   "model.box_batch_size_per_image=64"]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["text", "coco"])
def test_fast_dev_run_in_both_formats(tmp_path: Path, fmt: str) -> None:
    train, val = make_detection_dataset(tmp_path / "data", fmt)
    config = tmp_path / "detector.yaml"
    config.write_text("task_type: object_detection\nmodel:\n  name: fasterrcnn\n  rpn_post_nms_top_n_train: 100\n"
                      "image_size: 64\nbatch_size: 4\ndata:\n  num_workers: 0\n")
    # A torchvision-style state dict for 90 COCO classes: the class-dependent layers are replaced.
    from mitorch.models import fasterrcnn

    torch.save(fasterrcnn(90, image_size=64).state_dict(), tmp_path / "coco.pth")
    result = run("mitrain", config, train, val, "-d", "-w", tmp_path / "coco.pth", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert set(result.metrics) == {"mAP", "mAP_50", "mAP_75", "loss", "num_samples"}
    assert result.metrics["num_samples"] == 4 and result.metrics["loss"] > 0
    assert "roi_heads.box_predictor" in result.stderr and "are replaced" in result.stderr


@pytest.mark.slow
def test_the_task_defaults_train_small_objects_without_diverging(tmp_path: Path) -> None:
    # The shape that went to nan in its second epoch: 96x96 images with 1-3 objects of 8-24 px,
    # trained with every optimization default that task_type=object_detection picks.
    from mitorch.api import train as train_model

    train, val = make_detection_dataset(tmp_path, "text", num_train=96, num_val=32, size=96, max_objects=3,
                                        object_sizes=(8, 24), seed=1)
    # The model's proposal counts are cut as in the other quick runs (QUICK_DETECTION); the
    # optimization (lr, warmup, clipping, schedule) is the task's own.
    cfg = compose([*QUICK_DETECTION, f"data.train={train}", f"data.val={val}", "image_size=96", "max_epochs=2",
                   "val_every_n_epochs=2"])
    epochs = []
    metrics = train_model(cfg, epoch_callbacks=[epochs.append])
    losses = [epoch["train_loss"] for epoch in epochs]
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0], losses
    assert metrics["mAP_50"] > 0.05, metrics  # untrained, it is 0
    assert metrics["macs"] > 0 and metrics["latency_ms_b1"] > 0  # a detector's costs, measured after training


@pytest.mark.slow
def test_train_then_mitest_predictions_agree_with_pycocotools_then_mipredict(tmp_path: Path) -> None:
    train, val = make_detection_dataset(tmp_path / "data", "coco", num_train=8, size=64, val_is_train=True)
    weights = tmp_path / "detector.pt"
    # The task's own optimization defaults (warmup, gradient clipping): without them this run
    # diverges or not depending on the machine's floating-point rounding.
    trained = run("mitrain", f"data.train={train}", f"data.val={val}", *QUICK_DETECTION, "max_epochs=20",
                  "val_every_n_epochs=20", "augmentation=detection_val", f"output={weights}", cwd=tmp_path,
                  timeout=900)
    assert trained.returncode == 0, trained.stderr
    assert trained.metrics["mAP_50"] > 0.3, trained.metrics  # untrained, it is about 0

    tested = run("mitest", f"data.train={train}", f"data.val={val}", f"weights={weights}", *QUICK_DETECTION, "augmentation=detection_val",
                 "--predictions", tmp_path / "coco", cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr
    assert tested.metrics == pytest.approx(validation_metrics(trained.metrics), abs=1e-6)
    reference = _pycocotools_map(tmp_path / "coco")
    printed = tested.metrics
    assert [printed["mAP"], printed["mAP_50"], printed["mAP_75"]] == pytest.approx(reference, abs=1e-4)
    results = json.loads((tmp_path / "coco" / "predictions.json").read_text())
    assert {r["category_id"] for r in results} <= {3, 7}  # the dataset's own category ids

    config = tmp_path / "detector.json"
    config.write_text(json.dumps({"task_type": "object_detection", "image_size": 64}))
    images = [tmp_path / "data" / "images" / f"train_{i}.png" for i in (0, 1, 2)]
    predicted = run("mipredict", config, weights, *images, "-o", tmp_path / "drawn", "--threshold", "0.3",
                    cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    lines = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p in images]
    assert any(box["class"] in CLASSES and box["score"] >= 0.3 for line in lines for box in line["boxes"])
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["train_0.png", "train_1.png", "train_2.png"]
    drawn = np.asarray(Image.open(tmp_path / "drawn" / "train_1.png"))
    assert drawn.shape == (64, 64, 3) and not np.array_equal(drawn, np.asarray(Image.open(images[1]).convert("RGB")))


def test_cost_metrics_of_a_detector() -> None:
    from mitorch.engine.costs import measure_costs
    from mitorch.models import fasterrcnn

    model = fasterrcnn(3, image_size=64)
    costs = measure_costs(model, image_size=64, batch_size=2, device=torch.device("cpu"), detection=True)
    assert costs["num_parameters"] == sum(p.numel() for p in model.parameters())
    # The backbone's convolutions alone: far more than its classifier head's.
    assert costs["macs"] > 10 * model.roi_heads.box_predictor.cls_score.in_features * 1000
    assert costs["latency_ms_batch"] >= costs["latency_ms_b1"] * 0.5 > 0
