"""The service on one machine, across real processes, on the embedded (SQLite) store:
misubmit -> micontrol -> mitrain --training-id -> miquery."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mitorch.store.base import STATUSES
from tests.conftest import make_text_dataset, run
from tests.helpers import validation_metrics

pytestmark = pytest.mark.slow


class Service:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {"MITORCH_DB_URI": f"sqlite:///{root / 'db.sqlite'}", "MITORCH_ARTIFACTS_URI": str(root / "art"),
                    "MITORCH_LOCAL_CAPACITY": "1", "MITORCH_HEARTBEAT_S": "1"}
        data = make_text_dataset(root / "data", num_train=24, num_val=8)
        self.data = [f"data.train={data.train}", f"data.val={data.val}", "image_size=32", "batch_size=8",
                     "data.num_workers=0"]

    def __call__(self, prog: str, *args: str, **env: str):
        return run(prog, *args, cwd=self.root, env={**self.env, **env})

    def submit(self, *args: str) -> str:
        result = self("misubmit", *args, *self.data)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def query(self, *args: str) -> dict:
        result = self("miquery", *args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def training(self, training_id: str) -> dict:
        return self.query(training_id)["training"]

    def tick_until(self, done, timeout: float = 600, **env: str) -> list[str]:
        actions: list[str] = []
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"timed out; actions so far: {actions}"
            actions += self("micontrol", **env).stdout.splitlines()
            time.sleep(0.5)
        return actions

    def status(self, training_id: str) -> str:
        return self.training(training_id)["status"]

    def submit_slow_training(self, epochs: int) -> str:
        """Queues a training of a few seconds an epoch."""
        slow = make_text_dataset(self.root / "slow", num_train=240, num_val=8)
        result = self("misubmit", f"data.train={slow.train}", f"data.val={slow.val}", "image_size=32",
                      "batch_size=8", "data.num_workers=0", f"max_epochs={epochs}")
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def start_slow_training(self, epochs: int, **env: str) -> str:
        """Queues a training of a few seconds an epoch, dispatches it (with env added to the
        controller's, and so the training's, environment), and waits for its first epoch."""
        training_id = self.submit_slow_training(epochs)
        self("micontrol", **env)
        deadline = time.monotonic() + 600
        while not self.query(training_id)["results"]:
            assert time.monotonic() < deadline, "the training did not finish its first epoch"
            time.sleep(0.3)
        return training_id


@pytest.fixture
def service(tmp_path: Path) -> Service:
    return Service(tmp_path)


def test_priorities_run_in_order_with_per_epoch_results(service: Service) -> None:
    ids = {p: service.submit("--priority", str(p), "max_epochs=2", "--allow-duplicate") for p in (5, 1, 3)}
    actions = service.tick_until(lambda: service.query()["counts"]["completed"] == 3)
    dispatched = [line.split()[1] for line in actions if line.startswith("dispatched")]
    assert dispatched == [ids[1], ids[3], ids[5]]
    trainings = [service.training(ids[p]) for p in (1, 3, 5)]
    starts = [t["started_at"] for t in trainings]
    assert starts == sorted(starts)
    assert trainings[0]["completed_at"] <= trainings[1]["started_at"]  # capacity 1: one at a time
    for training_id in ids.values():
        view = service.query(training_id)
        assert [r["epoch"] for r in view["results"]] == [1, 2]
        assert view["results"][-1]["val"] == validation_metrics(view["training"]["metrics"])
        assert Path(view["training"]["weights"]).is_file()
    overview = service.query()
    assert overview["counts"]["completed"] == 3 and overview["queue"] == [] and overview["running"] == []
    assert {t["id"] for t in overview["recent"]} == set(ids.values())


def test_a_queued_training_logs_to_mlflow_and_csv_as_its_config_asks(service: Service, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # this test's reader; the training sets it itself
    mlruns = (tmp_path / "mlruns").as_uri()
    training_id = service.submit("max_epochs=2", "logger=[mlflow,csv]")
    service.tick_until(lambda: service.status(training_id) == "completed", MLFLOW_TRACKING_URI=mlruns)
    client = MlflowClient(tracking_uri=mlruns)
    [logged] = client.search_runs([client.get_experiment_by_name("mitorch").experiment_id])
    assert logged.info.status == "FINISHED" and logged.info.run_name == f"{training_id} attempt 1"
    assert logged.data.tags["mitorch.training_id"] == training_id and logged.data.tags["mitorch.attempt"] == "1"
    accuracy = [r["val"]["top1_accuracy"] for r in service.query(training_id)["results"]]
    history = client.get_metric_history(logged.info.run_id, "val/top1_accuracy")
    assert [(m.step, m.value) for m in history] == [(1, pytest.approx(accuracy[0])), (2, pytest.approx(accuracy[1]))]
    rows = (Path(service.training(training_id)["log"]).parent / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # a header and one row an epoch


def test_a_killed_training_is_requeued_and_resumes(service: Service) -> None:
    training_id = service.start_slow_training(epochs=3)
    os.kill(service.training(training_id)["pid"], signal.SIGKILL)
    time.sleep(0.5)
    actions = service.tick_until(lambda: service.status(training_id) == "completed")
    assert any(a.startswith(f"requeued {training_id} (retry 1 of 2: its process is gone)") for a in actions)
    training = service.training(training_id)
    assert training["retries"] == 1 and [a["outcome"] for a in training["attempts"]] == ["lost", "completed"]
    assert Path(training["log"]).parent.name == "attempt-2"
    assert (Path(training["log"]).parent.parent / "attempt-1" / "train.log").is_file()
    assert [h["status"] for h in training["status_history"]] == ["new", "queued", "running", "new", "queued",
                                                                  "running", "completed"]
    assert [r["epoch"] for r in service.query(training_id)["results"]] == [1, 2, 3]
    assert "resuming from" in (Path(training["log"])).read_text()


def test_cancel_stops_a_running_training_at_an_epoch_end(service: Service) -> None:
    queued = service.submit("--priority", "500")
    training_id = service.start_slow_training(epochs=5)
    assert service("micontrol", "cancel", training_id).stdout.startswith(f"cancel-requested {training_id}")
    assert service("micontrol", "cancel", queued).stdout.strip() == f"cancelled {queued}"
    deadline = time.monotonic() + 600
    while service.status(training_id) == "running":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert service.status(training_id) == "cancelled" and service.status(queued) == "cancelled"
    assert len(service.query(training_id)["results"]) < 5
    assert service.query()["counts"]["cancelled"] == 2


def test_racing_ticks_dispatch_each_training_once(service: Service) -> None:
    ids = [service.submit("max_epochs=1", "--allow-duplicate") for _ in range(4)]
    env = {**os.environ, **service.env, "MITORCH_LOCAL_CAPACITY": "2"}
    command = [str(Path(sys.executable).parent / "micontrol")]
    ticks = [subprocess.Popen(command, cwd=service.root, env=env, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    lines = [line for tick in ticks for line in tick.communicate(timeout=60)[0].splitlines()]
    dispatched = [line.split()[1] for line in lines if line.startswith("dispatched")]
    assert len(dispatched) == 2 and len(set(dispatched)) == 2
    service.tick_until(lambda: service.query()["counts"]["completed"] == 4, MITORCH_LOCAL_CAPACITY="2")
    for training_id in ids:
        history = [h["status"] for h in service.training(training_id)["status_history"]]
        assert history.count("queued") == 1 and history.count("running") == 1


def test_an_invalid_config_is_refused_with_nothing_stored(service: Service) -> None:
    for bad in (["model=resnt"], ["optimizer.lr=fast"], ["model._target_=os.system"]):
        result = service("misubmit", *bad)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert result.stderr.startswith("misubmit: error: ")
    assert service.query()["counts"] == dict.fromkeys(STATUSES, 0)


@pytest.mark.parametrize("argv", [["misubmit", "--help"], ["micontrol", "--help"], ["miquery", "--help"],
                                  ["miquery"], ["micontrol"], ["micontrol", "gc", "--dry-run"],
                                  ["midataset", "--help"], ["midataset", "list"],
                                  ["midataset", "register", "missing.json"]])
def test_service_commands_do_not_import_torch(service: Service, argv: list[str]) -> None:
    code = (f"import sys; sys.argv = {argv!r}\n"
            f"from mitorch.cli.{argv[0]} import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=service.root,
                         env={**os.environ, **service.env})
    assert out.stdout.strip().splitlines()[-1] == "NO TORCH", out.stderr


def test_sweep_queues_the_cartesian_product_under_one_job(service: Service) -> None:
    result = service("misubmit", "-m", "optimizer.lr=0.1,0.01,0.001", "model=resnet,mobilenet_v3", "--priority", "7",
                     *service.data)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    job_id = lines[0].split()[1]
    assert lines[0] == f"job {job_id}" and len(lines) == 7
    assert not (service.root / "multirun").exists()
    view = service.query(job_id)
    assert view["job"]["job_type"] == "sweep" and view["job"]["status"] == "running"
    combos = {(t["config"]["optimizer"]["lr"], t["config"]["model"]["_target_"].rsplit(".", 1)[1])
              for t in view["trainings"]}
    assert combos == {(lr, m) for lr in (0.1, 0.01, 0.001) for m in ("resnet", "mobilenet_v3")}
    assert {t["priority"] for t in view["trainings"]} == {7}
    assert sorted(t["trial_number"] for t in view["trainings"]) == list(range(6))
    assert service("micontrol", "cancel", *[t["id"] for t in view["trainings"]]).returncode == 0
    assert service("micontrol").stdout.strip() == f"completed job {job_id} (6 cancelled)"
    assert service.query(job_id)["job"]["status"] == "completed"

    refused = service("misubmit", "-m", "optimizer.lr=0.1,0.01", "model=resnet,vgg", *service.data)
    assert refused.returncode != 0 and "unknown model 'vgg'" in refused.stderr
    assert service.query()["counts"]["new"] == 0 and len(service.query()["recent"]) == 6


def test_a_preempted_training_goes_back_to_the_queue_and_resumes(service: Service) -> None:
    training_id = service.start_slow_training(epochs=3)
    os.kill(service.training(training_id)["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 600
    while service.status(training_id) == "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    training = service.training(training_id)
    assert training["status"] == "new" and training["preemptions"] == 1 and training.get("retries", 0) == 0
    assert "stopped by SIGTERM" in training["requeue_reason"]
    service.tick_until(lambda: service.status(training_id) == "completed")
    assert [r["epoch"] for r in service.query(training_id)["results"]] == [1, 2, 3]
    training = service.training(training_id)
    assert training["attempt"] == 2 and training["attempts"][0]["outcome"] == "preempted"
    assert "resuming from" in Path(training["log"]).read_text()  # attempt 2's log


def test_base_starts_from_another_trainings_weights(service: Service) -> None:
    import torch

    first = service.submit("max_epochs=1")
    service.tick_until(lambda: service.status(first) == "completed")
    second = service.submit(f"base={first}", "optimizer.lr=0", "max_epochs=1")
    service.tick_until(lambda: service.status(second) == "completed")
    weights = [torch.load(service.training(t)["weights"], weights_only=True)["model"]["conv1.weight"]
               for t in (first, second)]
    assert torch.equal(weights[0], weights[1])  # lr 0: the base's weights, unchanged

    unknown = service("misubmit", "base=0123456789abcdef01234567", *service.data)
    assert unknown.returncode != 0 and "base training 0123456789abcdef01234567 is not in the job store" in unknown.stderr
    direct = service("mitrain", f"base={first}", *service.data)
    assert direct.returncode != 0 and "queue this training with misubmit" in direct.stderr.strip().splitlines()[-1]
