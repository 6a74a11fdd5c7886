"""Issue-4 behaviour through the console scripts: DDP on CPU, SIGTERM and resume, averaging."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import BIN, QUICK, make_text_dataset, run
from tests.helpers import validation_metrics

pytestmark = pytest.mark.slow


def test_two_processes_count_every_validation_image_once(tmp_path: Path) -> None:
    data = make_text_dataset(tmp_path / "data", num_train=32, num_val=11)  # 11: not a multiple of 2
    common = [f"data.train={data.train}", f"data.val={data.val}", "image_size=32", "batch_size=4",
              "data.num_workers=0"]
    trained = run("mitrain", *common, "num_processes=2", "max_epochs=2", "-o", "w.pt", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert trained.metrics["num_samples"] == 11
    assert len([line for line in trained.stdout.splitlines() if line.startswith("{")]) == 1  # rank 0 only
    tested = run("mitest", *common, "-w", "w.pt", cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr
    assert tested.metrics == pytest.approx(validation_metrics(trained.metrics), rel=1e-4)


def test_a_failing_process_stops_the_run_with_its_error(tmp_path: Path) -> None:
    data = make_text_dataset(tmp_path / "data", num_train=16, num_val=4, zipped=False)
    (data.root / "images" / "train_5.png").write_bytes(b"broken")
    result = run("mitrain", f"data.train={data.train}", f"data.val={data.val}", "num_processes=2", *QUICK,
                 cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "cannot decode image" in result.stderr.strip().splitlines()[-1]


def _train_command(data, checkpoints: Path, run_dir: Path, weights: Path) -> list[str]:
    return [str(BIN / "mitrain"), f"data.train={data.train}", f"data.val={data.val}", "image_size=32",
            "batch_size=8", "data.num_workers=2", "max_epochs=2", "deterministic=true", "augmentation=standard",
            f"checkpoint_dir={checkpoints}", f"hydra.run.dir={run_dir}", "-o", str(weights)]


def test_sigterm_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    data = make_text_dataset(tmp_path / "data", num_train=240, num_val=16)
    reference = subprocess.run(_train_command(data, tmp_path / "a", tmp_path / "run_a", tmp_path / "a.pt"),
                               cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr

    command = _train_command(data, tmp_path / "b", tmp_path / "run_b", tmp_path / "b.pt")
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "run_b" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (log.is_file() and log.read_text().count("\n") >= 1):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before its first epoch"
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)  # early in epoch 2
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr
    assert "stopped by SIGTERM at epoch 2" in stderr and "checkpoint saved to" in stderr
    assert (tmp_path / "b" / "last.pt").is_file() and not (tmp_path / "b.pt").exists()

    resumed = subprocess.run(command[:-3] + [f"hydra.run.dir={tmp_path / 'run_c'}", "-o", str(tmp_path / "b.pt")],
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "at epoch 2" in resumed.stderr
    final = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert validation_metrics(final) == pytest.approx(
        validation_metrics(json.loads(reference.stdout.strip().splitlines()[-1])), rel=1e-5)
    a = torch.load(tmp_path / "a.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)


def test_corrupt_checkpoint_is_an_error_naming_it(tmp_path: Path, text_dataset) -> None:
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "last.pt").write_bytes(b"half a checkpoint")
    args = [f"data.train={text_dataset.train}", f"data.val={text_dataset.val}", "checkpoint_dir=ck", *QUICK]
    result = run("mitrain", *args, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"checkpoint {tmp_path / 'ck' / 'last.pt'} cannot be read" in result.stderr.strip().splitlines()[-1]
    assert run("mitrain", *args, "resume=false", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("averaging", ["ema_decay=0.9", "swa_fraction=0.5"])
def test_weight_averaging_reports_and_saves_the_average(tmp_path: Path, text_dataset, averaging: str) -> None:
    # optimizer.lr=0.01: at the default 0.1 these tiny runs diverge, and any two weights would differ.
    args = [f"data.train={text_dataset.train}", f"data.val={text_dataset.val}", *QUICK[:3], "max_epochs=2",
            "optimizer.lr=0.01", "keep_best=true", "checkpoint_dir=ck"]
    averaged = run("mitrain", *args, averaging, "-o", "avg.pt", cwd=tmp_path)
    assert averaged.returncode == 0, averaged.stderr
    kind = averaging.split("_")[0]
    assert averaged.metrics["averaging"] == kind
    # -o holds the average the trainer kept beside the raw weights in last.pt, and ema's lags behind them.
    saved = torch.load(tmp_path / "avg.pt", weights_only=True)["model"]
    checkpoint = torch.load(tmp_path / "ck" / "last.pt", weights_only=True)
    average = {key.removeprefix("module."): value for key, value in checkpoint["average"].items()
               if key.startswith("module.")}
    assert saved.keys() == average.keys() == checkpoint["model"].keys()
    assert all(torch.equal(saved[key], average[key]) for key in saved)
    if kind == "ema":
        assert not torch.allclose(saved["fc.weight"], checkpoint["model"]["fc.weight"])
    tested = run("mitest", f"data.train={text_dataset.train}", f"data.val={text_dataset.val}", *QUICK[:3],
                 "-w", "avg.pt", cwd=tmp_path)
    reported = validation_metrics(averaged.metrics)
    assert tested.metrics == pytest.approx(reported, rel=1e-4)
    assert torch.load(tmp_path / "ck" / "best.pt", weights_only=True)["class_names"][0] == "class_0"


def test_torchrun_runs_mitrain_as_two_ranks(tmp_path: Path) -> None:
    data = make_text_dataset(tmp_path / "data", num_train=32, num_val=11)
    completed = subprocess.run(
        [str(BIN / "torchrun"), "--nproc_per_node=2", str(BIN / "mitrain"), f"data.train={data.train}",
         f"data.val={data.val}", "image_size=32", "batch_size=4", "data.num_workers=0", "max_epochs=1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 0, completed.stderr
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1 and json.loads(lines[0])["num_samples"] == 11
    assert len(list((tmp_path / "outputs").rglob("metrics.jsonl"))) == 1
    assert len(list((tmp_path / "outputs").rglob("last.pt"))) == 1


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_sigterm_to_mitrain_stops_every_local_process_with_a_checkpoint(tmp_path: Path) -> None:
    data = make_text_dataset(tmp_path / "data", num_train=320, num_val=8)
    command = [str(BIN / "mitrain"), f"data.train={data.train}", f"data.val={data.val}", "num_processes=2",
               "image_size=32", "batch_size=8", "data.num_workers=0", "max_epochs=2", f"checkpoint_dir={tmp_path / 'ck'}"]
    process = subprocess.Popen([*command, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    log = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not log.is_file():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before its first epoch"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)  # to mitrain alone, as a scheduler would
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr
    assert "stopped by SIGTERM at epoch 2" in stderr.strip().splitlines()[-1]
    assert (tmp_path / "ck" / "last.pt").is_file()
    time.sleep(1)
    assert _processes_mentioning(str(data.train)) == []  # no rank left behind

    resumed = subprocess.run([*command, f"hydra.run.dir={tmp_path / 'run2'}"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "at epoch 2" in resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["num_samples"] == 8
