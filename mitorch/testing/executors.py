"""The conformance suite of executors: what every place that runs trainings must do for the
controller (mitorch.service.executors.Executor is the contract).

An executor's tests subclass ExecutorConformance and provide one fixture, `harness`, an
ExecutorHarness over the executor under test: it makes the executor and, because only the
outermost boundary may be faked, drives what happens to a run from outside (a run that ends on its
own, a run that is killed, an executor that cannot see a run, a launch that fails). The suite
plays the controller: it claims a training in a store, launches it, asks its state, stops it.

MiTorch runs it on the local executor (real processes) and on the AzureML executor (over a fake
AzureML client), in tests/test_executors.py and tests/test_azureml.py.
"""
from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from typing import Any

import pytest

from mitorch.service.executors import Executor, LaunchError
from mitorch.store import JobStore

# How long a run may take to show a change the suite waited for (a process starting or ending).
PATIENCE_S = 30.0


class ExecutorHarness(ABC):
    """What the suite needs from an executor's tests besides the executor itself."""

    store: JobStore
    executor: Executor

    @abstractmethod
    def end(self, training: dict[str, Any], killed: bool = False) -> None:
        """Makes the training's run end: on its own (its training finished), or killed from
        outside (a lost machine, an out-of-memory kill)."""

    @abstractmethod
    def out_of_sight(self, training: dict[str, Any]) -> dict[str, Any]:
        """The training as the executor would see a run it cannot tell about (a process on
        another machine, a service that does not answer)."""

    @abstractmethod
    def failing_launch(self) -> AbstractContextManager[None]:
        """A context in which the next launch cannot start (a missing interpreter, a refused
        submission)."""

    def training(self) -> dict[str, Any]:
        """A training claimed as the controller claims one: a new attempt, for this executor."""
        self.store.add_training({"config": {"max_epochs": 1}})
        return self.store.claim_training({"executor": self.executor.name},
                                         new_attempt={"executor": self.executor.name})


def _launched(harness: ExecutorHarness) -> dict[str, Any]:
    training = harness.training()
    run_id = harness.executor.launch(training, None)
    assert isinstance(run_id, str) and run_id, f"launch returned {run_id!r}, not a run id"
    harness.store.update_training(training["id"], {"run_id": run_id}, attempt=training["attempt"])
    return {**training, "run_id": run_id}


def _eventually(harness: ExecutorHarness, training: dict[str, Any], state: str) -> None:
    deadline = time.monotonic() + PATIENCE_S
    seen = harness.executor.state(training)
    while seen != state:
        assert time.monotonic() < deadline, f"the run's state stayed {seen!r}, not {state!r}"
        time.sleep(0.05)
        seen = harness.executor.state(training)


class ExecutorConformance:
    """What every executor must do. Subclasses provide the `harness` fixture."""

    def test_identity_and_capacity(self, harness: ExecutorHarness) -> None:
        executor = harness.executor
        assert re.fullmatch(r"[a-z]+:\S+", executor.name), f"{executor.name!r} is not KIND:WHERE"
        assert isinstance(executor.capacity, int) and executor.capacity >= 1
        executor.check_ready()  # the settings the harness made are usable

    def test_a_launched_run_runs_until_it_ends_then_is_gone(self, harness: ExecutorHarness) -> None:
        training = _launched(harness)
        assert harness.executor.state(training) == "running"
        harness.end(training)
        _eventually(harness, training, "gone")
        reason = harness.executor.gone_reason(training)
        assert reason is None or (isinstance(reason, str) and "\n" not in reason and reason)

    def test_a_killed_run_is_gone(self, harness: ExecutorHarness) -> None:
        training = _launched(harness)
        harness.end(training, killed=True)
        _eventually(harness, training, "gone")

    def test_each_launch_is_its_own_run(self, harness: ExecutorHarness) -> None:
        first, second = _launched(harness), _launched(harness)
        assert first["run_id"] != second["run_id"]
        harness.end(first)
        _eventually(harness, first, "gone")
        assert harness.executor.state(second) == "running"
        harness.end(second)

    def test_cancel_stops_a_run_and_a_gone_run_counts_as_stopped(self, harness: ExecutorHarness) -> None:
        training = _launched(harness)
        assert harness.executor.cancel(training) is True
        _eventually(harness, training, "gone")
        assert harness.executor.cancel(training) is True
        assert harness.executor.cancel(training, force=True) is True

    def test_a_forced_cancel_stops_a_run(self, harness: ExecutorHarness) -> None:
        training = _launched(harness)
        assert harness.executor.cancel(training, force=True) is True
        _eventually(harness, training, "gone")

    def test_a_run_it_cannot_see_is_unknown_not_gone(self, harness: ExecutorHarness) -> None:
        training = _launched(harness)
        assert harness.executor.state(harness.out_of_sight(training)) == "unknown"
        harness.end(training)

    def test_a_launch_that_cannot_start_raises_launch_error(self, harness: ExecutorHarness) -> None:
        training = harness.training()
        with harness.failing_launch(), pytest.raises(LaunchError) as raised:
            harness.executor.launch(training, None)
        assert str(raised.value) and "\n" not in str(raised.value)
