"""miexport: ONNX and TorchScript files that give PyTorch's outputs, their sidecar, the check that
refuses a mismatching export, mipredict on the exported file, and a search job's chosen trial.

The weights are untrained (written with save_weights), which is all an export needs.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from mitorch import build
from mitorch.config import compose
from mitorch.models.weights import save_weights
from tests.helpers import run_in_process

pytest.importorskip("onnxruntime", reason="the export extra: pip install 'mitorch[export]'")

CLASSES = ["cat", "dog", "owl"]
TASKS = {"multiclass": ["image_size=32"],
         "multilabel": ["task_type=multilabel_classification", "image_size=32"],
         "detection": ["task_type=object_detection", "image_size=64"]}


def _weights(folder: Path, task: str, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """Untrained weights of a small model for task, and that model (eval mode)."""
    cfg = compose(TASKS[task])
    torch.manual_seed(seed)
    model = build.build_model(cfg, len(CLASSES))
    path = folder / f"{task}_{seed}.pt"
    save_weights(path, model, CLASSES, cfg.task_type, OmegaConf.to_container(cfg, resolve=True))
    return path, model.eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, torch.nn.Module]]:
    folder = tmp_path_factory.mktemp("weights")
    return {task: _weights(folder, task) for task in TASKS}


def _images(folder: Path) -> list[str]:
    """Three images of other sizes than the models', one not square."""
    rng = np.random.default_rng(1)
    names = []
    for i, (height, width) in enumerate([(40, 40), (48, 70), (90, 60)]):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"image{i}.png")
        names.append(f"image{i}.png")
    return names


def _lines(result) -> list[dict]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _same_predictions(by_weights: list[dict], by_export: list[dict]) -> None:
    """The same classes or boxes in the same order; scores and box corners as printed, give or
    take the last printed digit (the two runtimes round differently)."""
    assert len(by_weights) == len(by_export)
    for want, got in zip(by_weights, by_export):
        key = "boxes" if "boxes" in want else "classes"
        assert [item["class"] for item in got[key]] == [item["class"] for item in want[key]]
        for a, b in zip(want[key], got[key]):
            assert abs(a["score"] - b["score"]) <= 1e-4
            assert np.allclose(a.get("box", []), b.get("box", []), atol=0.1)


@pytest.mark.slow
def test_an_onnx_classifier_gives_pytorchs_logits_and_mipredicts_the_same(weights, tmp_path: Path) -> None:
    path, model = weights["multiclass"]
    done = run_in_process("miexport", path, "-o", "out/model.onnx", cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == "" and "largest differences from PyTorch: logits" in done.stdout
    sidecar = json.loads((tmp_path / "out/model.onnx.json").read_text())
    assert sidecar["class_names"] == CLASSES and sidecar["task_type"] == "multiclass_classification"
    assert sidecar["image_size"] == 32 and sidecar["resize"] == {"shorter_side": 37, "center_crop": 32}
    assert sidecar["mean"] == pytest.approx([0.485, 0.456, 0.406]) and sidecar["outputs"] == ["logits"]
    import onnx
    import onnxruntime

    metadata = {p.key: p.value for p in onnx.load(str(tmp_path / "out/model.onnx")).metadata_props}
    assert json.loads(metadata["class_names"]) == CLASSES and json.loads(metadata["std"]) == sidecar["std"]

    # ONNX Runtime on images of its own, normalized inside; PyTorch on the same images normalized by hand.
    pixels = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    session = onnxruntime.InferenceSession(str(tmp_path / "out/model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"image": pixels.numpy()})[0]
    mean, std = (torch.tensor(sidecar[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        expected = model((pixels - mean) / std)
    assert np.abs(logits - expected.numpy()).max() <= 1e-4

    images = _images(tmp_path)
    (tmp_path / "config.yaml").write_text("image_size: 32\n")
    by_weights = _lines(run_in_process("mipredict", "config.yaml", path, *images, cwd=tmp_path))
    by_export = _lines(run_in_process("mipredict", "out/model.onnx", *images, cwd=tmp_path))
    assert [line["image"] for line in by_export] == images
    _same_predictions(by_weights, by_export)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_a_torchscript_multilabel_classifier_mipredicts_the_same(weights, tmp_path: Path) -> None:
    path, model = weights["multilabel"]
    assert run_in_process("miexport", path, "-o", "model.pt", "--format", "torchscript", cwd=tmp_path).returncode == 0
    scripted = torch.jit.load(str(tmp_path / "model.pt"))
    pixels = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(scripted(pixels), model((pixels - mean) / std), atol=1e-5)
    images = _images(tmp_path)
    (tmp_path / "config.yaml").write_text("task_type: multilabel_classification\nimage_size: 32\n")
    by_weights = _lines(run_in_process("mipredict", "config.yaml", path, *images, "--threshold", "0.3", cwd=tmp_path))
    by_export = _lines(run_in_process("mipredict", "model.pt", *images, "--threshold", "0.3", cwd=tmp_path))
    assert any(line["classes"] for line in by_weights)
    _same_predictions(by_weights, by_export)


@pytest.mark.slow
@pytest.mark.parametrize("format, name", [("onnx", "detector.onnx"), ("torchscript", "detector.pt")])
def test_an_exported_detector_gives_pytorchs_boxes_and_mipredicts_the_same(weights, tmp_path: Path, format: str,
                                                                          name: str) -> None:
    from mitorch.export import load_exported, read_sidecar

    path, model = weights["detection"]
    assert run_in_process("miexport", path, "-o", name, "--format", format, cwd=tmp_path).returncode == 0
    sidecar = read_sidecar(tmp_path / name)
    assert sidecar["outputs"] == ["boxes", "scores", "labels"] and sidecar["resize"] == {"size": [64, 64]}
    run = load_exported(tmp_path / name, sidecar)
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(3))
    boxes, scores, labels = run(image)
    with torch.no_grad():
        expected = model([image])[0]
    # Untrained boxes score about 1/4 each: many, in the same order (no two scores tie here).
    assert len(boxes) == len(expected["boxes"]) > 10
    assert torch.equal(labels, expected["labels"] - 1)  # class indices, not the model's labels
    assert (boxes - expected["boxes"]).abs().max() <= 1e-2 and (scores - expected["scores"]).abs().max() <= 1e-4

    images = _images(tmp_path)
    (tmp_path / "config.yaml").write_text("task_type: object_detection\nimage_size: 64\n")
    by_weights = _lines(run_in_process("mipredict", "config.yaml", path, *images, "--threshold", "0.2", cwd=tmp_path))
    by_export = _lines(run_in_process("mipredict", name, *images, "--threshold", "0.2", cwd=tmp_path))
    assert all(line["boxes"] for line in by_weights)
    _same_predictions(by_weights, by_export)


@pytest.mark.slow
def test_an_export_that_differs_from_pytorch_is_refused_and_nothing_is_written(weights, tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from mitorch import export

    loaded = export.load_exported

    def off_by_a_little(path, sidecar):
        run = loaded(path, sidecar)
        return lambda image: tuple(output + 2e-3 for output in run(image))  # as a wrong kernel would

    monkeypatch.setattr(export, "load_exported", off_by_a_little)
    done = run_in_process("miexport", weights["multiclass"][0], "-o", "model.pt", "--format", "torchscript",
                          cwd=tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("miexport: error: the torchscript export differs from PyTorch on the sample images: "
                                  "largest logits difference 0.002 > 0.0001; nothing was written")
    assert len(done.stderr.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def _search_job(store, tmp_path: Path, weights: list[Path]) -> tuple[str, list[str]]:
    """A finished three-trial search job over two points whose two trainings wrote the given
    weights, in the order the job queued them (the second one queued scores best); its third
    trial repeats a point and reuses that point's training."""
    from mitorch.service.search import step as search
    from mitorch.service.search.job import prepare

    job = {"job_type": "search", "overrides": ["max_epochs=1"], "search_space": {"optimizer.lr": "0.1,0.01"},
           "sampler": {"name": "grid"}, "pruner": {"name": "none"}, "n_trials": 3, "max_concurrent": 1}
    job_id, _ = store.add_job(prepare(job, store, str(tmp_path)))
    queued: list[str] = []
    for _ in range(10):
        search.step(store, lambda action: None)
        for training in store.list_trainings(["new"], job_id=job_id):
            queued.append(training["id"])
            store.update_training(training["id"], {"status": "completed", "weights": str(weights[len(queued) - 1]),
                                                   "metrics": {"top1_accuracy": 0.4 if len(queued) == 1 else 0.9}})
        if store.get_job(job_id)["status"] != "running":
            assert len(queued) == 2
            return job_id, queued
    raise AssertionError("the job did not end")


@pytest.mark.slow
def test_miexport_job_exports_the_best_trials_weights_or_the_trial_asked(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from mitorch.cli.miexport import _job_weights
    from mitorch.store import open_store
    from tests.helpers import user_home

    env = user_home(tmp_path, monkeypatch)
    paths = [_weights(tmp_path, "multiclass", seed=1)[0], _weights(tmp_path, "multiclass", seed=2)[0]]
    store = open_store()
    try:
        job_id, (worse, best) = _search_job(store, tmp_path, paths)
        trial_of_worse = store.get_training(worse)["trial_number"]
        [reused] = store.get_job(job_id)["reused"]
    finally:
        store.close()
    done = run_in_process("miexport", "--job", job_id, "-o", "best.pt", "--format", "torchscript", cwd=tmp_path,
                          env=env)
    assert done.returncode == 0, done.stderr
    sidecar = json.loads((tmp_path / "best.pt.json").read_text())
    assert sidecar["training_id"] == best and sidecar["job_id"] == job_id
    assert Path(sidecar["weights"]).read_bytes() == paths[1].read_bytes()

    weights, source = _job_weights(job_id, trial_of_worse)
    assert Path(weights).read_bytes() == paths[0].read_bytes() and source["training_id"] == worse
    weights, source = _job_weights(job_id, reused["number"])  # no training of its own: the one it reused
    assert source["training_id"] == reused["reused_from"] in (worse, best)
    assert Path(weights).read_bytes() == paths[[worse, best].index(reused["reused_from"])].read_bytes()
    missing = run_in_process("miexport", "--job", job_id, "--trial", "7", "-o", "x.onnx", cwd=tmp_path, env=env)
    assert missing.returncode == 2
    assert missing.stderr == f"miexport: error: job {job_id} has no trial 7; miquery {job_id} lists its trials\n"
    assert not (tmp_path / "x.onnx").exists()


def test_miexport_job_without_a_completed_trial_asks_for_one(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from mitorch.service.search.job import prepare
    from mitorch.store import open_store
    from tests.helpers import user_home

    env = user_home(tmp_path, monkeypatch)
    job = {"job_type": "search", "overrides": ["max_epochs=1"], "search_space": {"optimizer.lr": "0.1,0.01"},
           "sampler": {"name": "grid"}, "pruner": {"name": "none"}, "n_trials": 2, "max_concurrent": 2}
    store = open_store()
    try:
        job_id, _ = store.add_job(prepare(job, store, str(tmp_path)))
    finally:
        store.close()
    done = run_in_process("miexport", "--job", job_id, "-o", "model.onnx", cwd=tmp_path, env=env)
    assert done.returncode == 2 and done.stderr == (f"miexport: error: job {job_id} has no best trial yet (no completed "
                                                    f"trial); give --trial N (miquery {job_id} lists its trials)\n")
    assert not (tmp_path / "model.onnx").exists()


def test_miexport_without_arguments_shows_its_usage_and_its_help_imports_no_torch(tmp_path: Path) -> None:
    bare = run_in_process("miexport", cwd=tmp_path)
    assert bare.returncode == 2 and bare.stdout == ""
    assert bare.stderr.startswith("usage: miexport (WEIGHTS | --job JOB [--trial N]) -o OUT")
    assert bare.stderr.splitlines()[-1] == "miexport: error: give WEIGHTS or --job JOB; see miexport --help"
    code = ("import contextlib, io, sys\nfrom mitorch.cli.miexport import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
            "    main(['--help'])\n"
            "print('--format' in out.getvalue(), sorted(m for m in ('torch', 'onnx') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.stdout.strip() == "True []", done.stderr
