"""A queued training's weights file records the run it came from (training id, fingerprint,
parent, dataset, MiTorch version), and weights files from before lineage load as they did."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import mitorch
from mitorch.service import runner
from mitorch.store.base import DB_NOW
from mitorch.store.sqlite import SQLiteStore
from tests.helpers import QUICK, make_text_dataset
from tests.test_fences import store  # noqa: F401 - a fixture


def queued(store: SQLiteStore, fields: dict[str, Any]) -> str:  # noqa: F811 - the fixture's name
    """A training dispatched as attempt 1, as a controller's claim leaves it."""
    training_id = store.add_training(fields)
    claimed = store.claim_training({"executor": "local:host", "dispatched_at": DB_NOW},
                                   new_attempt={"executor": "local:host", "dispatched_at": DB_NOW})
    assert claimed["id"] == training_id
    return training_id


def test_a_queued_trainings_weights_record_its_lineage(store: SQLiteStore, tmp_path: Path) -> None:  # noqa: F811
    from omegaconf import OmegaConf

    from mitorch.models.weights import read_weights

    data = make_text_dataset(tmp_path / "data", num_train=8, num_val=4)
    config = OmegaConf.to_container(mitorch.compose([*QUICK, f"data.train={data.train}", f"data.val={data.val}",
                                                     "keep_best=true"]))
    parent = store.add_training({"config": config, "status": "completed"})
    training_id = queued(store, {"config": config, "fingerprint": "c0ffee" * 10, "parent": parent,
                                 "tags": ["lineage"]})
    runner.run_training(training_id, 1, store=store)
    training = store.get_training(training_id)
    assert training["status"] == "completed"
    expected = {"training_id": training_id, "attempt": 1, "fingerprint": "c0ffee" * 10, "parent": parent,
                "job_id": None, "dataset": None, "mitorch_version": mitorch.__version__}
    state, metadata = read_weights(training["weights"])
    assert metadata["lineage"] == expected and state  # still a loadable weights file
    best = Path(training["weights"]).with_name("best.pt")
    assert read_weights(best)[1]["lineage"] == expected


def test_a_weights_file_without_lineage_still_loads_and_one_with_it_carries_it(tmp_path: Path) -> None:
    import torch

    from mitorch.models.weights import read_weights, save_weights

    path = tmp_path / "model.pt"
    save_weights(path, torch.nn.Linear(2, 3), ["a", "b", "c"], "multiclass_classification", {"max_epochs": 1})
    state, metadata = read_weights(path)
    assert "lineage" not in metadata and set(state) == {"weight", "bias"}
    save_weights(path, torch.nn.Linear(2, 3), ["a", "b", "c"], "multiclass_classification", {"max_epochs": 1},
                 {"training_id": "x"})
    state, metadata = read_weights(path)
    assert metadata["lineage"] == {"training_id": "x"} and set(state) == {"weight", "bias"}


@pytest.mark.parametrize("dataset", [{"name": "shapes", "version": 3}])
def test_lineage_names_a_registered_dataset(dataset: dict) -> None:
    assert runner.lineage({"id": "t1", "dataset": dataset, "job_id": "j1", "config": {}}, 2) == {
        "training_id": "t1", "attempt": 2, "fingerprint": None, "parent": None, "job_id": "j1", "dataset": dataset,
        "mitorch_version": mitorch.__version__}
