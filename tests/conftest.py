"""Shared fixtures: tiny generated datasets and a runner for the console scripts."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BIN = Path(sys.executable).parent
COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40)]


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    # The built-in dataset is generated once per test session, never into the user's cache.
    os.environ["MITORCH_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))


def image_bytes(label_set: list[int], rng: np.random.Generator, size: int = 24, fmt: str = "PNG") -> bytes:
    """A small image whose colour patches encode its labels, so a model can learn them fast."""
    pixels = rng.integers(0, 60, size=(size, size, 3)).astype(np.uint8)
    for i, label in enumerate(label_set):
        x = (i % 2) * size // 2
        pixels[:, x:x + size // 2] = COLOURS[label % len(COLOURS)]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


@dataclass
class TextDataset:
    root: Path
    train: Path
    val: Path
    num_val: int


def make_text_dataset(root: Path, multilabel: bool = False, num_train: int = 24, num_val: int = 10,
                      classes: int = 3, zipped: bool = True, labels_file: bool = True, seed: int = 0) -> TextDataset:
    """Writes train.txt / val.txt (+ labels.txt) with images in a zip or as plain files."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", num_train), ("val", num_val)):
        lines = []
        archive = zipfile.ZipFile(root / f"{split}.zip", "w") if zipped else None
        for i in range(count):
            labels = sorted(set(rng.choice(classes, size=rng.integers(1, 3)).tolist())) if multilabel else [i % classes]
            data = image_bytes(labels, rng)
            name = f"{split}_{i}.png"
            if archive is not None:
                archive.writestr(name, data)
                path = f"{split}.zip@{name}"
            else:
                (root / "images").mkdir(exist_ok=True)
                (root / "images" / name).write_bytes(data)
                path = f"images/{name}"
            lines.append(f"{path} {','.join(map(str, labels))}")
        if archive is not None:
            archive.close()
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    if labels_file:
        (root / "labels.txt").write_text("\n".join(f"class_{c}" for c in range(classes)) + "\n")
    return TextDataset(root, root / "train.txt", root / "val.txt", num_val)


def make_folder_dataset(root: Path, per_class: int = 6, classes: int = 3, seed: int = 0) -> tuple[Path, Path]:
    """Writes train/<class>/*.jpg and val/<class>/*.jpg."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                (folder / f"{i}.jpg").write_bytes(image_bytes([c], rng, fmt="JPEG"))
    return root / "train", root / "val"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A user's own database and credentials file, in-process and for subprocesses."""
    env = {"MITORCH_DB_URI": f"sqlite:///{tmp_path / 'db.sqlite'}", "MITORCH_CREDENTIALS": str(tmp_path / "creds.json"),
           "MITORCH_CACHE_DIR": str(tmp_path / "cache")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def text_dataset(tmp_path: Path) -> TextDataset:
    return make_text_dataset(tmp_path / "data")


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def metrics(self) -> dict:
        """The JSON object on the last stdout line."""
        return json.loads(self.stdout.strip().splitlines()[-1])


# Small and quick: a tiny input size, one worker-free loader, few batches.
QUICK = ["image_size=32", "batch_size=8", "data.num_workers=0", "max_epochs=1"]


def run(prog: str, *args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> Result:
    """Runs an installed console script (mitrain, mitest) as a user would."""
    completed = subprocess.run([str(BIN / prog), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                               timeout=timeout, env={**os.environ, **(env or {})})
    return Result(completed.returncode, completed.stdout, completed.stderr)
