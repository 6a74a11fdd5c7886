"""Search jobs with several objectives and with constraints: the job file, the step, the Pareto
front the job keeps.

The search step runs in this process; trainings are completed by writing their metrics, as the
training side would (no model is trained here).
"""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from mitorch.errors import ConfigError
from mitorch.service.search import step as search
from mitorch.service.search.job import COST_METRICS, prepare, settings
from mitorch.service.search.journal import study_storage
from mitorch.service.search.trials import dominates
from mitorch.store.sqlite import SQLiteStore

# Model size (depth) against how fast it learns (lr): 9 points.
SPACE = {"model.depth": "18,34,50", "optimizer.lr": "0.1,0.01,0.001"}
TWO = [{"metric": "top1_accuracy"}, {"metric": "num_parameters"}]
DIRECTIONS = ["maximize", "minimize"]
TASK = "multiclass_classification"


@pytest.fixture
def store(tmp_path: Path):
    store = SQLiteStore(tmp_path / "db.sqlite")
    yield store
    store.close()


def _metrics(training: dict) -> dict:
    """A training's metrics from its point: deeper is more accurate and bigger; lr 0.01 learns
    best, so the other rates are dominated by 0.01 at the same depth."""
    config = training["config"]
    depth, lr = config["model"]["depth"], config["optimizer"]["lr"]
    accuracy = depth / 100 + {0.1: 0.1, 0.01: 0.3, 0.001: 0.0}[lr]
    return {"top1_accuracy": round(accuracy, 6), "num_parameters": depth * 1_000_000, "loss": 1.0}


def _job(store: SQLiteStore, tmp_path: Path, **fields) -> str:
    job = {"job_type": "search", "overrides": ["max_epochs=1"], "search_space": SPACE, "objectives": TWO,
           "sampler": {"name": "random", "seed": 1}, "n_trials": 6, "max_concurrent": 2, **fields}
    job_id, _ = store.add_job(prepare(job, store, str(tmp_path)))
    return job_id


def _run(store: SQLiteStore, job_id: str, metrics=_metrics) -> list[str]:
    """Steps the job to its end, completing each training it queues."""
    actions: list[str] = []
    for _ in range(30):
        search.step(store, actions.append)
        running = store.list_trainings(["new"], job_id=job_id)
        assert len(running) <= 2, actions  # max_concurrent
        for training in running:
            store.update_training(training["id"], {"status": "completed", "metrics": metrics(training)})
        if store.get_job(job_id)["status"] != "running":
            return actions
    raise AssertionError(f"the job did not end: {actions}")


def _study(store: SQLiteStore, job_id: str) -> optuna.Study:
    return optuna.load_study(study_name=job_id, storage=study_storage(store, job_id))


def test_a_two_objective_job_ends_with_a_front_no_completed_trial_dominates(store, tmp_path: Path) -> None:
    job_id = _job(store, tmp_path)
    actions = _run(store, job_id)
    job = store.get_job(job_id)
    study = _study(store, job_id)
    assert job["status"] == "completed" and job["counts"]["complete"] == 6, actions
    assert actions[-1].endswith(f"; best trial {job['best']['number']}: top1_accuracy {job['best']['value']:.6g}; "
                                f"Pareto front of {len(job['pareto'])} trials)")
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    front = job["pareto"]
    assert front and [entry["number"] for entry in front] == sorted(
        (entry["number"] for entry in front), key=lambda n: (-study.trials[n].values[0], n))
    numbers = {entry["number"] for entry in front}
    for entry in front:
        assert not any(dominates(t.values, entry["values"], DIRECTIONS) for t in complete)
        assert entry["values"] == study.trials[entry["number"]].values
    # Every complete trial off the front is dominated by one on it.
    for trial in complete:
        if trial.number not in numbers:
            assert any(dominates(entry["values"], trial.values, DIRECTIONS) for entry in front)
    assert numbers == {t.number for t in study.best_trials}
    trainings = {t["id"]: t for t in store.list_trainings(job_id=job_id)}
    for entry in front:  # its training (its own, or the one it reused) has its values
        metrics = trainings[entry["training_id"]]["metrics"]
        assert entry["values"] == [metrics["top1_accuracy"], metrics["num_parameters"]]
    assert job["best"]["number"] == front[0]["number"]
    assert set(job["importances"]["params"]) == set(SPACE)  # for the first objective


def test_a_constraint_keeps_the_trials_that_break_it_off_the_front(store, tmp_path: Path) -> None:
    # depth 50 breaks the bound: the most accurate points cannot be on the front.
    job_id = _job(store, tmp_path, constraints=["num_parameters <= 4e7"], n_trials=9, max_concurrent=2,
                  sampler={"name": "grid"})
    actions = _run(store, job_id)
    job = store.get_job(job_id)
    study = _study(store, job_id)
    breaking = {t.number for t in study.trials if t.params["model.depth"] == 50}
    assert len(breaking) == 3 and job["counts"]["complete"] == 9, actions
    assert all(study.trials[n].system_attrs["constraints"] == [10_000_000.0] for n in breaking)
    front = {entry["number"] for entry in job["pareto"]}
    assert front and not front & breaking and all(entry["feasible"] for entry in job["pareto"])
    # Without the constraint depth 50 at lr 0.01 is on the front (it is the most accurate point).
    best_unconstrained = next(t.number for t in study.trials if t.params == {"model.depth": 50, "optimizer.lr": 0.01})
    assert best_unconstrained in breaking
    assert front == {t.number for t in study.trials if t.params["optimizer.lr"] == 0.01} - breaking
    assert sum("(breaks a constraint)" in a for a in actions) == 3


def test_a_constraint_with_one_objective_keeps_the_best_feasible(store, tmp_path: Path, monkeypatch,
                                                                  capsys) -> None:
    from mitorch.cli import miquery

    monkeypatch.setenv("MITORCH_DB_URI", f"sqlite:///{tmp_path / 'db.sqlite'}")
    job_id = _job(store, tmp_path, objectives=None, constraints=["num_parameters <= 4e7"], n_trials=9,
                  sampler={"name": "grid"}, pruner="none")
    _run(store, job_id)
    job = store.get_job(job_id)
    assert "pareto" not in job and job["best"]["params"] == {"model.depth": 34, "optimizer.lr": 0.01}
    assert job["best"]["value"] == 0.64 and job["best"]["feasible"] is True
    miquery.main([job_id])
    lines = capsys.readouterr().out.splitlines()
    header = lines.index("# trials (best first)") + 1
    assert lines[header].split("\t") == ["trial", "params", "top1_accuracy", "feasible", "state", "epochs", "id"]
    rows = [line.split("\t") for line in lines[header + 1:header + 10]]
    assert {row[1]: row[3] for row in rows if row[3] == "no"} == {
        f"model.depth=50 optimizer.lr={lr}": "no" for lr in ("0.1", "0.01", "0.001")}
    assert sum(row[3] == "yes" for row in rows) == 6


def test_a_multi_objective_job_is_never_pruned(store, tmp_path: Path) -> None:
    job = {"job_type": "search", "search_space": SPACE, "objectives": TWO}
    assert settings(job, TASK)["pruner"] == {"name": "none"}
    for pruner in ("median", {"name": "hyperband"}):
        with pytest.raises(ConfigError, match="cannot be pruned.*set pruner: none"):
            settings({**job, "pruner": pruner}, TASK)
    # Epochs reported by its trainings are never told to the study: no pruner could judge them.
    job_id = _job(store, tmp_path)
    search.step(store, lambda line: None)
    for training in store.list_trainings(job_id=job_id):
        store.put_result(training["id"], {"epoch": 0, "val": {"top1_accuracy": 0.1, "num_parameters": 1}})
    actions: list[str] = []
    search.step(store, actions.append)
    assert not any("pruned" in a for a in actions)
    assert all(not t.intermediate_values for t in _study(store, job_id).trials)


def test_a_missing_objective_metric_fails_the_trial_with_its_name(store, tmp_path: Path) -> None:
    job_id = _job(store, tmp_path, n_trials=2, max_failed=5)
    actions = _run(store, job_id, metrics=lambda training: {"top1_accuracy": 0.5})
    assert store.get_job(job_id)["status"] == "failed"
    assert sum(a.endswith("(its training recorded no num_parameters)") for a in actions) == 2, actions


def test_a_trial_reusing_a_training_is_told_every_objective(store, tmp_path: Path) -> None:
    first = _job(store, tmp_path, n_trials=9, sampler={"name": "grid"})
    _run(store, first)
    second = _job(store, tmp_path, n_trials=3, sampler={"name": "grid"})
    actions = _run(store, second)
    job = store.get_job(second)
    assert not store.list_trainings(job_id=second) and len(job["reused"]) == 3, actions
    study = _study(store, second)
    for entry in job["reused"]:
        source = store.get_training(entry["reused_from"])
        expected = [source["metrics"]["top1_accuracy"], source["metrics"]["num_parameters"]]
        assert entry["values"] == expected == study.trials[entry["number"]].values


@pytest.mark.parametrize(("fields", "message"), [
    ({"objective": {"metric": "loss"}}, "give objective \\(one metric\\) or objectives"),
    ({"objectives": [{"metric": "top1_accuracy"}]}, "objectives must be a list of 2 or more"),
    ({"objectives": [{"metric": "top1_accuracy"}, {"metric": "mAP"}]}, "objectives\\[1\\].metric 'mAP' is not a"),
    ({"objectives": [{"metric": "loss"}, {"metric": "loss"}]}, "names loss more than once"),
    ({"objectives": [{"metric": "loss"}, {}]}, "objectives\\[1\\].metric None is not a metric"),
    ({"objectives": [{"metric": "loss"}, {"metric": "macs", "direction": "up"}]}, "must be minimize or maximize"),
    ({"constraints": "latency_ms_b1 <= 5"}, "constraints must be a list of 1 to 20 strings"),
    ({"constraints": ["latency_ms_b1 < 5"]}, "must read METRIC <= NUMBER or METRIC >= NUMBER"),
    ({"constraints": ["speed <= 5"]}, "speed is not a metric of multiclass_classification"),
    ({"constraints": ["num_parameters <= lots"]}, "lots is not a finite number"),
    ({"constraints": ["num_parameters <= inf"]}, "inf is not a finite number"),
    ({"sampler": "cmaes"}, "sampler cmaes optimizes one objective"),
])
def test_job_file_mistakes_get_one_line_errors(fields: dict, message: str) -> None:
    job = {"job_type": "search", "search_space": SPACE, "objectives": TWO, **fields}
    with pytest.raises(ConfigError, match=message) as raised:
        settings(job, TASK)
    assert "\n" not in str(raised.value)


def test_job_file_objectives_and_constraints_are_kept_with_their_defaults() -> None:
    job = {"job_type": "search", "search_space": SPACE, "sampler": "nsga2",
           "objectives": [{"metric": "top1_accuracy"}, {"metric": "latency_ms_b1"}, {"metric": "loss"}],
           "constraints": ["latency_ms_b1 <= 5", " num_parameters<=5e6 ", "top1_accuracy >= 0.5"]}
    kept = settings(job, TASK)
    assert kept["objectives"] == [{"metric": "top1_accuracy", "direction": "maximize"},
                                  {"metric": "latency_ms_b1", "direction": "minimize"},
                                  {"metric": "loss", "direction": "minimize"}]
    assert kept["objective"] == kept["objectives"][0]
    assert kept["constraints"] == [{"metric": "latency_ms_b1", "op": "<=", "bound": 5.0},
                                   {"metric": "num_parameters", "op": "<=", "bound": 5e6},
                                   {"metric": "top1_accuracy", "op": ">=", "bound": 0.5}]
    single = settings({"job_type": "search", "search_space": SPACE, "objective": {"metric": "weights_mb"}}, TASK)
    assert single["objective"] == {"metric": "weights_mb", "direction": "minimize"} and "objectives" not in single


def test_the_cost_metrics_a_job_names_are_those_every_training_measures() -> None:
    import torch

    from mitorch.engine.costs import measure_costs
    from mitorch.task_types import direction

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    assert tuple(measure_costs(model, 4, 2, torch.device("cpu"), detection=False)) == COST_METRICS
    assert all(direction(metric) == "minimize" for metric in COST_METRICS)  # better when lower, everywhere


def test_constrained_samplers_read_the_values_the_step_stores() -> None:
    from optuna.samplers._tpe.sampler import _split_trials

    from mitorch.service.search.job import make_sampler

    sampler = make_sampler({"name": "nsga2", "seed": 0}, {}, constraints=2)
    study = optuna.create_study(directions=DIRECTIONS, sampler=sampler)
    for values, constraints in (([0.9, 1.0], [1.0, -2.0]), ([0.5, 3.0], [0.0, -1.0])):
        trial = study.ask()
        study._storage.set_trial_system_attr(trial._trial_id, "constraints", constraints)
        study.tell(trial, values)
    infeasible, feasible = study.trials
    assert infeasible.constraints == {"0": 1.0, "1": -2.0}
    assert study.best_trials == [feasible]  # the infeasible one dominates it, but is off the front
    # TPE learns good points from the feasible trial, not from the better infeasible one.
    below, above = _split_trials(study, study.trials, 1)
    assert below == [feasible] and above == [infeasible]


def test_miquery_shows_the_front_sorted_by_the_first_objective(store, tmp_path: Path, monkeypatch, capsys) -> None:
    import json

    from mitorch.cli import miquery

    monkeypatch.setenv("MITORCH_DB_URI", f"sqlite:///{tmp_path / 'db.sqlite'}")
    job_id = _job(store, tmp_path, constraints=["num_parameters <= 4e7"], n_trials=9, sampler={"name": "grid"})
    _run(store, job_id)
    miquery.main([job_id, "--json"])
    view = json.loads(capsys.readouterr().out)
    marks = {row["number"]: row["front"] for row in view["trials"]}
    assert {entry["number"] for entry in view["pareto"]} == {n for n, mark in marks.items() if mark == "pareto"}
    assert sorted(marks.values()) == ["dominated"] * 4 + ["infeasible"] * 3 + ["pareto"] * 2
    assert all(set(entry) >= {"number", "training_id", "values"} for entry in view["pareto"])
    miquery.main([job_id])  # plain text: a pipe
    lines = capsys.readouterr().out.splitlines()
    assert "constraints: num_parameters <= 4e+07" in lines
    header = lines.index("# trials (by top1_accuracy, best first)") + 1
    assert lines[header].split("\t") == ["trial", "params", "top1_accuracy", "num_parameters", "front", "state",
                                         "epochs", "id"]
    rows = [line.split("\t") for line in lines[header + 1:header + 10]]
    accuracies = [float(row[2]) for row in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    assert [row[4] for row in rows if row[1] == "model.depth=50 optimizer.lr=0.01"] == ["infeasible"]
    assert [row[4] for row in rows if row[1] == "model.depth=34 optimizer.lr=0.01"] == ["pareto"]
    assert [row[4] for row in rows if row[1] == "model.depth=34 optimizer.lr=0.1"] == ["dominated"]


def test_the_job_page_embeds_the_front_and_each_trials_point(store, tmp_path: Path) -> None:
    import json

    from starlette.testclient import TestClient

    from mitorch.viewer import Settings, create_app

    job_id = _job(store, tmp_path, constraints=["num_parameters <= 4e7"], n_trials=9, sampler={"name": "grid"})
    _run(store, job_id)
    client = TestClient(create_app(store, Settings(refresh_s=0, store_label="sqlite:///db")),
                        base_url="http://127.0.0.1:8080")
    page = client.get(f"/jobs/{job_id}").text
    block = page.split('<script type="application/json" id="pareto-data">')[1].split("</script>")[0]
    pareto = json.loads(block)
    assert pareto == client.get(f"/api/jobs/{job_id}").json()["study"]["pareto"]
    assert pareto["metrics"] == ["top1_accuracy", "num_parameters"] and len(pareto["points"]) == 9
    job = store.get_job(job_id)
    assert [p["number"] for p in pareto["points"] if p["front"]] == [entry["number"] for entry in job["pareto"]]
    study = _study(store, job_id)
    for point in pareto["points"]:
        trial = study.trials[point["number"]]
        assert point["values"] == trial.values and point["feasible"] == (trial.params["model.depth"] != 50)
    accuracies = [p["values"][0] for p in pareto["points"]]
    assert accuracies == sorted(accuracies, reverse=True)  # the first objective's best first
    parallel = pareto["parallel"]
    assert parallel["params"] == ["model.depth", "optimizer.lr"] and parallel["metric"] == "top1_accuracy"
    assert [a["low"] for a in parallel["axes"]] == ["18", "0.001"]
    for entry in parallel["trials"]:
        params = study.trials[entry["number"]].params
        assert entry["coords"][0] == (params["model.depth"] - 18) / 32
        assert entry["coords"][1] == pytest.approx((params["optimizer.lr"] - 0.001) / 0.099)
    assert 'id="pareto-charts"' in page and page.count('class="front-infeasible"') == 3
    assert "<dt>constraints</dt><dd id=\"constraints\">num_parameters &lt;= 4e+07</dd>" in page


def test_a_warm_start_copies_every_objective_and_the_constraint_values(store, tmp_path: Path) -> None:
    constraints = ["num_parameters <= 4e7"]
    earlier = _job(store, tmp_path, constraints=constraints, n_trials=9, sampler={"name": "grid"})
    _run(store, earlier)
    later = _job(store, tmp_path, constraints=constraints, warm_start=earlier, n_trials=2,
                 sampler={"name": "nsga2", "seed": 0})
    actions = _run(store, later)
    copied = [t for t in _study(store, later).trials if "warm_start_of" in t.user_attrs]
    originals = {t.number: t for t in _study(store, earlier).trials}
    assert len(copied) == 9, actions
    for trial in copied:
        original = originals[int(trial.user_attrs["warm_start_of"].split(":")[1])]
        assert trial.values == original.values and trial.constraints == original.constraints
    with pytest.raises(ConfigError, match="has other constraints than this job"):
        _job(store, tmp_path, warm_start=earlier)
    with pytest.raises(ConfigError, match=r"optimizes top1_accuracy \(maximize\), num_parameters \(minimize\), this "
                                          r"job top1_accuracy \(maximize\); set the same objectives"):
        _job(store, tmp_path, objectives=None, constraints=constraints, warm_start=earlier, pruner="none")


def test_constraint_values_are_how_far_each_bound_is_broken() -> None:
    from mitorch.service.search.trials import constraint_values, is_feasible

    constraints = [{"metric": "latency_ms_b1", "op": "<=", "bound": 5.0},
                   {"metric": "top1_accuracy", "op": ">=", "bound": 0.5}]
    assert constraint_values(constraints, {"latency_ms_b1": 7.0, "top1_accuracy": 0.75}) == [2.0, -0.25]
    assert constraint_values(constraints, {"latency_ms_b1": 7.0}) is None
    assert is_feasible([0.0, -1.0]) and not is_feasible([0.5, -1.0]) and is_feasible(None)
