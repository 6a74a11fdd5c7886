"""The commands end to end: mitrain, mitest and mipredict train and evaluate through the installed
console scripts (slow); every command parses, words its help and its usage errors the same way;
miquery's layout off a terminal."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from mitorch.engine.costs import COST_METRICS
from tests.conftest import QUICK, make_folder_dataset, make_text_dataset, run
from tests.helpers import validation_metrics

def _run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("metrics.jsonl"))


@pytest.mark.slow
def test_multiclass_text_format_train_then_test(tmp_path: Path, text_dataset) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": {"name": "resnet", "depth": 18}, "optimizer": {"lr": 0.01},
                                  "batch_size": 8, "max_epochs": 2}))
    trained = run("mitrain", config, "data/train.txt", "data/val.txt", "-o", "out/model.pt",
                  "image_size=32", "data.num_workers=1", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    metrics = trained.metrics
    assert set(metrics) == {"top1_accuracy", "top5_accuracy", "average_precision", "loss", "num_samples", *COST_METRICS}
    assert metrics["num_samples"] == text_dataset.num_val

    [run_dir] = _run_dirs(tmp_path / "outputs")
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert epochs[-1]["val"] == validation_metrics(metrics)
    assert (run_dir / ".hydra" / "config.yaml").is_file()

    saved = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    assert saved["class_names"] == ["class_0", "class_1", "class_2"]
    assert saved["config"]["batch_size"] == 8 and saved["config"]["optimizer"]["lr"] == 0.01

    tested = run("mitest", config, "data/train.txt", "data/val.txt", "-w", "out/model.pt", "image_size=32",
                 cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr
    assert tested.metrics == pytest.approx(validation_metrics(metrics))

    # mipredict on every validation image agrees with mitest's top-1 accuracy.
    images = [f"data/val.zip@val_{i}.png" for i in range(text_dataset.num_val)]
    predicted = run("mipredict", config, "out/model.pt", *images, "image_size=32", "-o", "drawn", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    lines = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert [line["image"] for line in lines] == images
    assert all(len(line["classes"]) == 3 and sum(c["score"] for c in line["classes"]) == pytest.approx(1, abs=1e-3)
               for line in lines)
    correct = [line["classes"][0]["index"] == i % 3 for i, line in enumerate(lines)]
    assert sum(correct) / len(correct) == pytest.approx(metrics["top1_accuracy"])
    assert len(list((tmp_path / "drawn").glob("val_*.png"))) == text_dataset.num_val


@pytest.mark.slow
def test_multilabel_text_format(tmp_path: Path) -> None:
    make_text_dataset(tmp_path / "data", multilabel=True, classes=4)
    result = run("mitrain", "task_type=multilabel_classification", "data.train=data/train.txt",
                 "data.val=data/val.txt", "optimizer.lr=0.01", *QUICK, "output=model.pt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert set(result.metrics) == {"accuracy_50", "average_precision", "loss", "num_samples", *COST_METRICS}
    assert result.metrics["num_samples"] == 10
    (tmp_path / "multilabel.yaml").write_text("task_type: multilabel_classification\nimage_size: 32\n")
    every = run("mipredict", "multilabel.yaml", "model.pt", "data/val.zip@val_0.png", "--threshold", "0", cwd=tmp_path)
    assert every.returncode == 0, every.stderr
    assert sorted(c["class"] for c in json.loads(every.stdout)["classes"]) == ["class_0", "class_1", "class_2", "class_3"]
    none = run("mipredict", "multilabel.yaml", "model.pt", "data/val.zip@val_0.png", "--threshold", "1.01",
               cwd=tmp_path)
    assert json.loads(none.stdout)["classes"] == []
    wrong = run("mipredict", "multilabel.yaml", "model.pt", "missing.png", cwd=tmp_path)
    assert wrong.returncode == 1 and wrong.stderr.startswith("mipredict: error: cannot read image missing.png")


@pytest.mark.slow
def test_image_folder_format_with_learning(tmp_path: Path) -> None:
    make_folder_dataset(tmp_path / "data", per_class=16)
    result = run("mitrain", "data.train=data/train", "data.val=data/val", "augmentation=val", "optimizer=adam",
                 "max_epochs=3", "image_size=32", "batch_size=8", "data.num_workers=0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # Colour-coded classes: three epochs are enough to beat chance (1/3) clearly.
    assert result.metrics["top1_accuracy"] > 0.6
    assert result.metrics["num_samples"] == 48


@pytest.mark.slow
def test_fast_dev_run_on_the_builtin_dataset(tmp_path: Path) -> None:
    result = run("mitrain", "-d", "batch_size=4", "-o", "w.pt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.metrics["num_samples"] == 4  # one validation batch
    [run_dir] = _run_dirs(tmp_path / "outputs")
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1
    assert torch.load(tmp_path / "w.pt", weights_only=True)["class_names"][0] == "circle"


@pytest.mark.slow
def test_sweep_runs_each_combination_in_its_own_directory(tmp_path: Path, text_dataset) -> None:
    result = run("mitrain", "-m", "optimizer.lr=0.1,0.01", "data.train=data/train.txt", "data.val=data/val.txt",
                 *QUICK, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dirs = _run_dirs(tmp_path / "multirun")
    assert len(run_dirs) == 2
    import yaml

    chosen = {o for d in run_dirs for o in yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text())
              if o.startswith("optimizer.lr=")}
    assert chosen == {"optimizer.lr=0.1", "optimizer.lr=0.01"}
    assert len([line for line in result.stdout.splitlines() if line.startswith("{")]) == 2


@pytest.mark.slow
def test_print_resolved_config(tmp_path: Path) -> None:
    result = run("mitrain", "--cfg", "job", "model=mobilenet_v3", "model.size=small", "optimizer.lr=0.3",
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "size: small" in result.stdout and "lr: 0.3" in result.stdout
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_torchvision_weights_with_another_class_count(tmp_path: Path, text_dataset) -> None:
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "tv.pth")
    result = run("mitrain", "data.train=data/train.txt", "data.val=data/val.txt", "-w", "tv.pth", "-d",
                 *QUICK, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "class-dependent layers (fc)" in result.stderr and "replaced" in result.stderr


def _corrupt_image(data: Path) -> None:
    (data / "images" / "val_1.png").write_bytes(b"definitely not a png")


def _zip_without_the_member(data: Path) -> None:
    import zipfile

    with zipfile.ZipFile(data / "val.zip", "w") as archive:
        archive.writestr("present.png", (data / "images" / "val_0.png").read_bytes())
    (data / "val.txt").write_text("val.zip@present.png 0\nval.zip@gone.png 1\n")


@pytest.mark.slow
@pytest.mark.parametrize("prog, args, setup, message", [
    ("mitrain", ["data.train=nope.txt", "data.val=nope.txt"], None, "dataset not found: "),
    ("mitrain", ["model=resnt"], None, "unknown model 'resnt'; choose from convnext_tiny"),
    ("mitrain", ["-m", "model=resnet,resnt"], None, "unknown model 'resnt'"),
    ("mitrain", ["optimizer.momentun=0.5"], None, "unknown key 'optimizer.momentun'"),
    ("mitrain", ["max_epochs=many"], None, "max_epochs must be an integer, got 'many'"),
    ("mitrain", ["missing.json", "a.txt", "b.txt"], None, "config file not found: missing.json"),
    ("mitrain", ["data.train=data/train.txt", "data.val=data/val.txt", "-d"], _corrupt_image,
     "val.txt line 2: cannot decode image"),
    ("mitrain", ["data.train=data/train.txt", "data.val=data/val.txt"],
     lambda d: (d / "val.txt").write_text("images/val_0.png 9\n"), "val.txt line 1: label 9 is out of range"),
    ("mitrain", ["data.train=data/train.txt", "data.val=data/val.txt"],
     lambda d: (d / "train.txt").write_text(""), "train.txt has no images"),
    ("mitrain", ["data.train=data/train.txt", "data.val=data/val.txt"],
     _zip_without_the_member, "val.txt line 2: gone.png is not in"),
    ("mitest", ["-w", "missing.pt"], None, "weights file not found"),
    ("mitest", [], None, "mitest needs weights"),
])
def test_bad_input_is_one_line_without_traceback(tmp_path: Path, prog, args, setup, message) -> None:
    data = make_text_dataset(tmp_path / "data", zipped=False).root
    if setup is not None:
        setup(data)
    result = run(prog, *args, *QUICK[:3], cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert result.stderr.strip().splitlines()[-1] == lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("prog, target", [("mitrain", "os.system"), ("mitrain", "planted.model"),
                                          ("mitest", "planted.model")])
def test_a_target_outside_the_allow_list_is_refused_before_anything_runs(tmp_path: Path, text_dataset, prog: str,
                                                                          target: str) -> None:
    # A module on the path that leaves a file behind if it is ever imported, and another if called.
    (tmp_path / "planted.py").write_text("from pathlib import Path\n"
                                         "Path('imported').touch()\n"
                                         "def model(**kwargs):\n    Path('called').touch()\n")
    from mitorch.models import resnet
    from mitorch.models.weights import save_weights

    # Weights that mitest could load: without the check it would go on to build the model.
    save_weights(tmp_path / "w.pt", resnet(num_classes=3), ["class_0", "class_1", "class_2"],
                 "multiclass_classification", {})
    extra = ["-o", "out.pt", f"hydra.run.dir={tmp_path / 'run'}"] if prog == "mitrain" else ["-w", "w.pt"]
    result = run(prog, f"data.train={text_dataset.train}", f"data.val={text_dataset.val}", *QUICK, *extra,
                 f"model._target_={target}", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"{prog}: error: model._target_ '{target}' is not allowed; targets must start with torch., "
        "torchvision., mitorch. (add a prefix to allowed_targets to permit it)"]
    left = {path.name for path in tmp_path.rglob("*")}
    assert left.isdisjoint({"imported", "called", "out.pt", "last.pt", "metrics.jsonl"}), left


@pytest.mark.slow
def test_help_does_not_import_torch(tmp_path: Path) -> None:
    for prog in ("mitrain", "mitest", "mipredict"):
        code = (f"import sys; sys.argv = ['{prog}', '--help']\n"
                f"from mitorch.cli.{prog} import main\n"
                "try:\n    main()\nexcept SystemExit:\n    pass\n"
                "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
        assert "CONFIG" in out.stdout and "WEIGHTS" in out.stdout
        assert out.stdout.strip().splitlines()[-1] == "NO TORCH"


# -- one parsing style, one help layout ---------------------------------------------------------

COMMANDS = ("mitrain", "mitest", "mipredict", "miexport", "misubmit", "miquery", "micontrol", "midataset", "miviewer")
SERVICE_COMMANDS = ("misubmit", "miquery", "micontrol", "midataset", "miviewer")


def _main(prog: str, argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """A command's main() in this process: (exit status, stdout, stderr)."""
    import importlib

    code = 0
    try:
        importlib.import_module(f"mitorch.cli.{prog}").main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("prog", COMMANDS)
def test_every_command_has_the_same_help_layout(prog: str, capsys: pytest.CaptureFixture) -> None:
    code, out, err = _main(prog, ["--help"], capsys)
    assert code == 0 and err == ""
    paragraphs = out.split("\n\n")
    assert paragraphs[0].startswith(f"usage: {prog} ")
    description = paragraphs[1]
    assert "\n" not in description and description.endswith("."), description  # one line
    assert paragraphs[2].startswith(("positional arguments:\n", "options:\n"))
    assert "  -h, --help  " in out


def test_service_commands_help_imports_no_torch(tmp_path: Path) -> None:
    code = ("import contextlib, io, sys\n"
            f"for prog in {SERVICE_COMMANDS!r}:\n"
            "    module = __import__(f'mitorch.cli.{prog}', fromlist=['main'])\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "        module.main(['--help'])\n"
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr


@pytest.mark.parametrize("prog, argv, message", [
    ("mipredict", [], "the following arguments are required: CONFIG, WEIGHTS, IMAGE"),
    ("mipredict", ["c.yaml", "w.pt", "a.png", "--threshold", "high"], "needs a number, got 'high'"),
    ("mitrain", ["--bogus"], "unknown option --bogus; see mitrain --help"),
    ("mitrain", ["-o"], "-o needs a path: -o PATH"),
    ("mitrain", ["--cfg", "everything"], "argument -c/--cfg: invalid choice: 'everything'"),
    ("mitrain", ["--training-id", "0123456789abcdef01234567", "max_epochs=1"], "--training-id takes one id"),
    ("mitrain", ["--attempt", "0"], "argument --attempt: a whole number from 1, got '0'"),
    ("mitest", ["-m", "optimizer.lr=0.1,0.2"], "unknown option -m; see mitest --help"),
    ("misubmit", ["--priority"], "argument --priority: expected one argument"),
    ("misubmit", ["--info"], "unknown option --info; see misubmit --help"),
    ("miquery", ["--limit", "many"], "argument --limit: needs a whole number of 0 or more, got 'many'"),
    ("micontrol", ["gc", "--older-than", "soon"], "--older-than takes a number of days of 0 or more"),
    ("micontrol", ["--interval", "0"], "--interval must be a positive number of seconds"),
    ("midataset", [], "the following arguments are required: {register,list,show}"),
    ("miviewer", ["--port", "http"], "a port is a whole number from 0 to 65535, got 'http'"),
])
def test_usage_errors_are_one_line_and_exit_2(prog: str, argv: list[str], message: str, home: dict,
                                              capsys: pytest.CaptureFixture) -> None:
    code, out, err = _main(prog, argv, capsys)
    assert code == 2 and out == "" and "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert errors == [err.splitlines()[-1]] and errors[0].startswith(f"{prog}: error: ") and message in errors[0], err
    if not argv:  # nothing asked: the usage comes first
        assert err.startswith(f"usage: {prog} ")


def test_training_commands_take_hydras_flags_and_overrides_in_any_order(tmp_path: Path, monkeypatch) -> None:
    from mitorch.cli._common import parse_command_line
    from mitorch.config import format_value

    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("batch_size: 4\n")
    command = parse_command_line(["max_epochs=2", "--cfg", "job", "c.yaml", "tr.txt", "--info", "defaults",
                                  "va.txt", "-d", "optimizer.lr=0.1"], "mitrain")
    assert command.hydra_flags == ["--cfg", "job", "--info", "defaults"]
    assert command.print_config and command.informational and not command.multirun
    assert command.overrides[-2:] == ["max_epochs=2", "optimizer.lr=0.1"]
    sweep = parse_command_line(["max_epochs=2", "-m", "c.yaml", "optimizer.lr=0.1,0.2"], "mitrain")
    assert sweep.multirun and sweep.hydra_flags == ["--multirun"] and sweep.overrides[-1] == "optimizer.lr=0.1,0.2"
    assert {f"data.train={format_value(str(tmp_path / 'tr.txt'))}", "fast_dev_run=true", "batch_size=4",
            f"data.val={format_value(str(tmp_path / 'va.txt'))}"} <= set(command.overrides)


# -- miquery off a terminal ---------------------------------------------------------------------


def _tables(out: str) -> dict[str, list[list[str]]]:
    """miquery's plain layout read back: {title: [header, *rows]}, each row its tab-separated cells."""
    tables = {}
    for block in out.strip("\n").split("\n\n"):
        lines = block.split("\n")
        if lines[0].startswith("# "):
            tables[lines[0][2:]] = [line.split("\t") for line in lines[1:] if not line.startswith("# ")]
    return tables


def test_miquery_off_a_terminal_is_tab_separated_with_nothing_cut(home: dict, capsys: pytest.CaptureFixture) -> None:
    from mitorch.store import open_store

    long_path = "/data/" + "a-very-long-folder-name/" * 8 + "train.txt"
    store = open_store()
    training_id = store.add_training({"config": {"data": {"train": long_path}, "max_epochs": 3}, "priority": 7,
                                      "error": None})
    code, out, _ = _main("miquery", [], capsys)
    assert code == 0 and "\x1b" not in out and "─" not in out
    queue = _tables(out)["queue (dispatch order)"]
    assert queue[0] == ["id", "priority", "submitted", "config"]
    assert [row[:2] for row in queue[1:]] == [[training_id, "7"]] and queue[1][3].endswith(long_path)
    assert all(len(row) == len(table[0]) for table in _tables(out).values() for row in table)
    code, out, _ = _main("miquery", [training_id], capsys)
    assert out.splitlines()[0] == f"training {training_id}: new  priority 7  ? ? lr=None epochs=3 {long_path}"
    assert _tables(out)["history"][1][0] == "new"


def test_miquery_on_a_terminal_keeps_its_tables(home: dict) -> None:
    import io

    from mitorch.cli.views import show

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    shown = Terminal()
    show({"job": {"id": "0123456789abcdef01234567", "job_type": "sweep", "status": "running"},
          "trainings": [{"id": "0123456789abcdef01234568", "status": "new", "overrides": ["max_epochs=1"]}]}, shown)
    assert "│ 0123456789abcdef01234568 │ new    │" in shown.getvalue() and "\t" not in shown.getvalue()


def test_miquery_of_a_sweep_shows_each_runs_overrides(tmp_path: Path, home: dict, monkeypatch,
                                                      capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = _main("misubmit", ["-m", "optimizer.lr=0.1,0.01", "max_epochs=1"], capsys)
    assert code == 0, err
    job_id = out.split()[1]
    code, out, _ = _main("miquery", [job_id], capsys)
    assert out.splitlines()[0] == f"job {job_id} (sweep): running"
    trainings = _tables(out)["trainings"]
    assert trainings[0] == ["id", "status", "result", "overrides"]
    assert sorted(row[3] for row in trainings[1:]) == ["optimizer.lr=0.01 max_epochs=1",
                                                       "optimizer.lr=0.1 max_epochs=1"]
