"""The conformance suite of executors: what every place that runs trainings must do for the
controller (mitorch.service.executors.base is the contract, and the guide to writing one).

An executor's tests subclass ExecutorConformance and provide one fixture, `harness`, an
ExecutorHarness over the executor under test: it makes the executor and, because only the
outermost boundary may be faked, drives what happens to a run from outside (a run that ends on its
own, a run that is killed, a run its service has not started yet, an executor that cannot see a
run, a launch that fails). The suite plays the controller: it claims a training in a store,
launches it and records what the launch returned, asks its state, stops it.

What it checks: identity (KIND:WHERE) and capacity; launch (a run id of its own per launch, what
it asks to record); the state of a live, waiting, finished, killed and unknown run; stop (cancel,
forced or not, and of a run already gone); a launch that cannot start (LaunchError, one line).

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

from mitorch.service import transitions
from mitorch.service.executors import RUN_STATES, Executor, LaunchError, Launched, launched
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

    def start(self, training: dict[str, Any]) -> None:
        """Makes the service start the training's launched run, where it queues runs before it
        starts them (the default does nothing: the run started at launch)."""

    def held(self, training: dict[str, Any]) -> bool:
        """Makes the service keep the training's launched run waiting to start (queued for nodes),
        and says whether it could: an executor whose runs start at launch returns False (the
        default), and the suite then checks that its live runs are never "waiting"."""
        return False

    def training(self) -> dict[str, Any]:
        """A training claimed as the controller claims one: a new attempt, for this executor."""
        self.store.add_training({"config": {"max_epochs": 1}})
        return transitions.claim(self.store, self.executor.name)


# Fields the controller writes itself: a launch may not ask to record under these names.
_CONTROLLER_FIELDS = {"id", "status", "attempt", "attempts", "executor", "run_id", "gpu", "studio_url", "pid",
                      "host", "heartbeat_at", "dispatched_at", "started_at", "completed_at", "error", "metrics"}


def _launched(harness: ExecutorHarness) -> dict[str, Any]:
    """Launches a claimed training and records what the launch returned, as the controller does."""
    training = harness.training()
    result = harness.executor.launch(training, None)
    assert isinstance(result, (str, Launched)), f"launch returned {result!r}, not a run id or a Launched"
    run = launched(result)
    assert isinstance(run.run_id, str) and run.run_id, f"launch returned the run id {run.run_id!r}"
    assert not set(run.details) & _CONTROLLER_FIELDS, f"launch asks to record {sorted(run.details)}"
    assert transitions.record_launch(harness.store, training, run, None)
    return harness.store.get_training(training["id"])


def _state(harness: ExecutorHarness, training: dict[str, Any]) -> str:
    seen = harness.executor.state(training)
    assert seen in RUN_STATES, f"state() said {seen!r}; it says one of {', '.join(RUN_STATES)}"
    return seen


def _eventually(harness: ExecutorHarness, training: dict[str, Any], state: str) -> None:
    deadline = time.monotonic() + PATIENCE_S
    seen = _state(harness, training)
    while seen != state:
        assert time.monotonic() < deadline, f"the run's state stayed {seen!r}, not {state!r}"
        time.sleep(0.05)
        seen = _state(harness, training)


class ExecutorConformance:
    """What every executor must do. Subclasses provide the `harness` fixture."""

    def test_identity_and_capacity(self, harness: ExecutorHarness) -> None:
        executor = harness.executor
        assert re.fullmatch(r"[a-z]+:\S+", executor.name), f"{executor.name!r} is not KIND:WHERE"
        assert isinstance(executor.capacity, int) and executor.capacity >= 1
        executor.check_ready()  # the settings the harness made are usable

    def test_a_launched_run_runs_until_it_ends_then_is_gone(self, harness: ExecutorHarness) -> None:
        training = _launched(harness)
        assert _state(harness, training) in ("running", "waiting")  # alive, whether started yet or not
        harness.start(training)
        assert _state(harness, training) == "running"
        harness.end(training)
        _eventually(harness, training, "gone")
        reason = harness.executor.gone_reason(training)
        assert reason is None or (isinstance(reason, str) and "\n" not in reason and reason)

    def test_a_killed_run_is_gone(self, harness: ExecutorHarness) -> None:
        training = _launched(harness)
        harness.end(training, killed=True)
        _eventually(harness, training, "gone")
        reason = harness.executor.gone_reason(training)
        assert reason is None or (isinstance(reason, str) and "\n" not in reason and reason)

    def test_each_launch_is_its_own_run(self, harness: ExecutorHarness) -> None:
        first, second = _launched(harness), _launched(harness)
        assert first["run_id"] != second["run_id"]
        harness.end(first)
        _eventually(harness, first, "gone")
        assert _state(harness, second) in ("running", "waiting")
        harness.end(second)

    def test_a_run_its_service_has_not_started_is_waiting_and_can_be_stopped(self, harness: ExecutorHarness) -> None:
        training = _launched(harness)
        if not harness.held(training):
            harness.start(training)
            assert _state(harness, training) == "running"  # it started at launch: it never waits
            harness.end(training)
            return
        assert _state(harness, training) == "waiting"
        assert harness.executor.cancel(training) is True
        _eventually(harness, training, "gone")

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
        assert _state(harness, harness.out_of_sight(training)) == "unknown"
        harness.end(training)

    def test_a_launch_that_cannot_start_raises_launch_error(self, harness: ExecutorHarness) -> None:
        training = harness.training()
        with harness.failing_launch(), pytest.raises(LaunchError) as raised:
            harness.executor.launch(training, None)
        assert str(raised.value) and "\n" not in str(raised.value)
