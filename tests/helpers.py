"""What many test files share: tiny generated datasets, a user's own store and credentials, the
console scripts run as a user would (a subprocess) or in-process, and the store on each backend."""
from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import secrets
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BIN = Path(sys.executable).parent
COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40)]
# Small and quick: a tiny input size, one worker-free loader, few batches.
QUICK = ["image_size=32", "batch_size=8", "data.num_workers=0", "max_epochs=1"]
MONGODB_URI_VARIABLE = "MITORCH_TEST_MONGODB_URI"
# A class or test that needs a real MongoDB server: skipped where none is named; conftest marks
# every test skipped this way `mongodb`, so `-m "not mongodb"` leaves it out.
needs_mongodb = pytest.mark.skipif(not os.environ.get(MONGODB_URI_VARIABLE), reason=f"set {MONGODB_URI_VARIABLE}")


# -- data -------------------------------------------------------------------------------------


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


def _write_split(root: Path, split: str, count: int, multilabel: bool, classes: int, zipped: bool,
                 rng: np.random.Generator) -> None:
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


def make_text_dataset(root: Path, multilabel: bool = False, num_train: int = 24, num_val: int = 10,
                      classes: int = 3, zipped: bool = True, labels_file: bool = True, seed: int = 0) -> TextDataset:
    """Writes train.txt / val.txt (+ labels.txt) with images in a zip or as plain files."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", num_train), ("val", num_val)):
        _write_split(root, split, count, multilabel, classes, zipped, rng)
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


def user_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **extra: str) -> dict[str, str]:
    """A user's own database, credentials file and cache (plus extra variables), set in this
    process and returned for subprocesses."""
    env = {"MITORCH_DB_URI": f"sqlite:///{tmp_path / 'db.sqlite'}", "MITORCH_CREDENTIALS": str(tmp_path / "creds.json"),
           "MITORCH_CACHE_DIR": str(tmp_path / "cache"), **extra}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


# -- the console scripts --------------------------------------------------------------------------


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def metrics(self) -> dict:
        """The JSON object on the last stdout line."""
        return json.loads(self.stdout.strip().splitlines()[-1])


def run(prog: str, *args: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> Result:
    """Runs an installed console script (mitrain, mitest) as a user would."""
    completed = subprocess.run([str(BIN / prog), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                               timeout=timeout, env={**os.environ, **(env or {})})
    return Result(completed.returncode, completed.stdout, completed.stderr)


def run_in_process(prog: str, *args: str, cwd: Path, env: dict | None = None) -> Result:
    """Runs a command's main() in this process, as run() would run its console script: its own
    working directory, environment and exit status. For commands that do not train (midataset,
    misubmit, miquery), where a new interpreter would only add its start-up to the test."""
    main = importlib.import_module(f"mitorch.cli.{prog}").main
    stdout, stderr = io.StringIO(), io.StringIO()
    returncode = 0
    with _environment(env or {}), contextlib.chdir(cwd), contextlib.redirect_stdout(stdout), \
            contextlib.redirect_stderr(stderr):
        try:
            main([str(arg) for arg in args])
        except SystemExit as e:
            returncode = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
    return Result(returncode, stdout.getvalue(), stderr.getvalue())


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    previous = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# -- the store on each backend ----------------------------------------------------------------------


@contextlib.contextmanager
def sqlite_store(tmp_path: Path) -> Iterator:
    """The embedded SQLite store in a folder of the test's own."""
    from mitorch.store.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "db" / "mitorch.db")
    try:
        yield store
    finally:
        store.close()


@contextlib.contextmanager
def mongomock_store() -> Iterator:
    """The MongoDB store over mongomock (skips where mongomock is not installed)."""
    mongomock = pytest.importorskip("mongomock")
    from mitorch.store.mongo import MongoStore

    store = MongoStore(client=mongomock.MongoClient(tz_aware=True))
    try:
        yield store
    finally:
        store.close()


@contextlib.contextmanager
def mongodb_server_store() -> Iterator:
    """The MongoDB store on the server in $MITORCH_TEST_MONGODB_URI, in a database of its own,
    dropped afterwards."""
    import pymongo

    from mitorch.store.mongo import MongoStore

    uri = os.environ[MONGODB_URI_VARIABLE]
    name = f"mitorch_test_{secrets.token_hex(4)}"
    store = MongoStore(uri, database=name)
    try:
        yield store
    finally:
        pymongo.MongoClient(uri).drop_database(name)
        store.close()


def validation_metrics(metrics: dict) -> dict:
    """A training's final metrics without what only training reports (its cost metrics, the
    weight average's kind): what mitest, or an epoch's validation, reports of the same weights."""
    from mitorch.engine.costs import COST_METRICS

    return {key: value for key, value in metrics.items() if key not in (*COST_METRICS, "averaging")}
