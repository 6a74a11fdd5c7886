"""Dataset formats, the zip reader, the built-in dataset, and data errors."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mitorch import DataError
from mitorch.data import builtin
from mitorch.data.dataset import ImageDataset
from mitorch.data.formats import load_index
from tests.helpers import image_bytes, make_folder_dataset, make_text_dataset


def test_text_format_with_zip_members_and_labels_file(tmp_path: Path) -> None:
    data = make_text_dataset(tmp_path, num_train=6, classes=3)
    index = load_index(str(data.train), multilabel=False)
    assert index.class_names == ["class_0", "class_1", "class_2"]
    assert index.labels == [[0], [1], [2], [0], [1], [2]]
    assert index.images[0] == f"{tmp_path / 'train.zip'}@train_0.png"  # relative to the text file
    dataset = ImageDataset(index, multilabel=False)
    image, target = dataset[1]
    assert image.shape == (3, 24, 24) and image.dtype == torch.uint8 and target == 1
    # The green patch of class 1 is read back from inside the zip.
    assert image[:, :, :12].float().mean(dim=(1, 2)).argmax() == 1


def test_multilabel_lines_and_default_class_names(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(image_bytes([0], np.random.default_rng(0)))
    (tmp_path / "list.txt").write_text("a.png 0,3\na.png 2\na.png\n")
    index = load_index(str(tmp_path / "list.txt"), multilabel=True)
    assert index.labels == [[0, 3], [2], []]
    assert index.class_names == ["label_0", "label_1", "label_2", "label_3"]
    _, target = ImageDataset(index, multilabel=True)[0]
    assert target.tolist() == [1.0, 0.0, 0.0, 1.0]


def test_paths_with_spaces(tmp_path: Path) -> None:
    (tmp_path / "my image.png").write_bytes(image_bytes([0], np.random.default_rng(0)))
    (tmp_path / "list.txt").write_text("my image.png 1\n")
    assert load_index(str(tmp_path / "list.txt"), multilabel=False).images == [str(tmp_path / "my image.png")]


def test_image_folder_format(tmp_path: Path) -> None:
    train, val = make_folder_dataset(tmp_path, per_class=2)
    index = load_index(str(train), multilabel=False)
    assert index.class_names == ["class_0", "class_1", "class_2"]
    assert sorted(label for [label] in index.labels) == [0, 0, 1, 1, 2, 2]
    (val / "class_9").mkdir()
    with pytest.raises(DataError, match="class_9 are not classes of the training set"):
        load_index(str(val), multilabel=False, class_names=index.class_names)


def test_one_zip_handle_per_process(tmp_path: Path, monkeypatch) -> None:
    data = make_text_dataset(tmp_path, num_train=8)
    opened = []
    original = zipfile.ZipFile

    def counting(*args, **kwargs):
        opened.append(args[0])
        return original(*args, **kwargs)

    dataset = ImageDataset(load_index(str(data.train), multilabel=False), multilabel=False)
    monkeypatch.setattr(zipfile, "ZipFile", counting)
    for i in range(len(dataset)):
        dataset[i]
    assert opened == [str(tmp_path / "train.zip")]


def test_reader_reopens_archives_in_a_forked_worker(tmp_path: Path) -> None:
    data = make_text_dataset(tmp_path, num_train=8)
    dataset = ImageDataset(load_index(str(data.train), multilabel=False), multilabel=False)
    dataset[0]  # the parent opens the archive first
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2,
                                         multiprocessing_context="fork")
    labels = torch.cat([targets for _, targets in loader])
    assert labels.tolist() == [0, 1, 2, 0, 1, 2, 0, 1]


@pytest.mark.parametrize("line, message", [
    ("train.zip@train_0.png 7", r"line 2: label 7 is out of range; labels.txt names 3 classes \(0..2\)"),
    ("train.zip@nope.png 1", r"line 2: nope.png is not in .*train.zip"),
    ("missing.zip@a.png 1", r"line 2: zip archive not found: .*missing.zip"),
    ("nothere.png 1", r"line 2: image not found: .*nothere.png"),
    ("train.zip@train_0.png x", r"line 2: label 'x' is not a class index"),
    ("train.zip@train_0.png", r"line 2: expected '<image> <label>'"),
    ("train.zip@train_0.png 0,1", r"line 2: one label expected for multiclass_classification"),
])
def test_bad_lines_are_named(tmp_path: Path, line: str, message: str) -> None:
    data = make_text_dataset(tmp_path, num_train=3)
    data.train.write_text(f"train.zip@train_0.png 0\n{line}\n")
    with pytest.raises(DataError, match=message):
        load_index(str(data.train), multilabel=False)


def test_missing_and_empty_datasets(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset not found: .*nothing.txt"):
        load_index(str(tmp_path / "nothing.txt"), multilabel=False)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match="empty.txt has no images"):
        load_index(str(tmp_path / "empty.txt"), multilabel=False)


def test_corrupt_image_names_file_and_line(tmp_path: Path) -> None:
    data = make_text_dataset(tmp_path, num_train=3, zipped=False)
    (tmp_path / "images" / "train_2.png").write_bytes(b"not an image at all")
    dataset = ImageDataset(load_index(str(data.train), multilabel=False), multilabel=False)
    dataset[0]
    with pytest.raises(DataError, match=r"train.txt line 3: cannot decode image .*train_2.png"):
        dataset[2]


def test_worker_errors_keep_their_one_line_message(tmp_path: Path) -> None:
    data = make_text_dataset(tmp_path, num_train=3, zipped=False)
    (tmp_path / "images" / "train_1.png").write_bytes(b"\x89PNG broken")
    dataset = ImageDataset(load_index(str(data.train), multilabel=False), multilabel=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=1)
    with pytest.raises(DataError) as error:
        next(iter(loader))
    assert str(error.value).startswith(f"{data.train} line 2: cannot decode image")
    assert "\n" not in str(error.value)


def test_builtin_dataset_is_deterministic(tmp_path: Path, monkeypatch) -> None:
    contents = []
    for name in ("a", "b"):
        monkeypatch.setenv("MITORCH_CACHE_DIR", str(tmp_path / name))
        train, val = builtin.builtin_dataset("multilabel_classification")
        with zipfile.ZipFile(Path(val).parent / "val.zip") as archive:
            contents.append((Path(train).read_text(), archive.read("00007.jpg")))
    assert contents[0] == contents[1]
    index = load_index(val, multilabel=True)
    assert index.class_names == list(builtin.SHAPES) and len(index) == 250
    assert any(len(labels) > 1 for labels in index.labels)
