"""The executor contract: what a place that runs trainings does for the controller.

How to write an executor (a Slurm cluster, a Kubernetes namespace, ...):

1. Subclass `Executor` and set two attributes in `__init__`:
   - `name`: the executor's identity, `KIND:WHERE` (`local:<host>`, `azureml:<workspace>/<compute>`,
     `slurm:<cluster>`). It is recorded on every training the executor launches, and a controller
     reconciles and counts only the trainings whose `executor` is its own `name`, so two
     controllers with the same name share one pool of capacity, and different names never touch
     each other's runs.
   - `capacity`: how many trainings may run at once (an int, or a property that asks the
     service once). The controller subtracts the trainings it already runs.
2. `launch(training, gpu)` starts `mitrain --training-id ID --attempt N` for `training["id"]` and
   `training["attempt"]` and returns at once (the run outlives the controller's tick). Return the
   run id (a string unique to this launch), or a `Launched` when the user should see more on the
   training (a link to the run's page, the service's job name). When the run cannot be started,
   raise `LaunchError` with one line saying why: the controller puts the training back in the
   queue, and fails it after MITORCH_MAX_LAUNCH_FAILURES launch failures in a row. Any other
   exception is a bug and stops the tick.
3. `state(training)` says what the executor knows of the run of the training's current attempt
   (`training["run_id"]`, `training["attempt"]`), as one of `RUN_STATES`:
   - "running": the run exists and may be training. The controller expects heartbeats from it.
   - "waiting": the run exists but the service has not started it yet (queued for nodes,
     pulling its image). The controller counts no heartbeat timeout while it waits.
   - "gone": the run is over (ended, killed, never existed). The controller requeues the
     training (using a retry) unless the run itself recorded how it ended. Say why in
     `gone_reason` when you know more than "it ended".
   - "unknown": the executor cannot tell (a run on another machine, a service that does not
     answer). Never say "gone" when unsure: a gone run's training runs again, so two copies
     could run; the controller waits for the heartbeat to expire on an "unknown" run instead.
4. `cancel(training, force=False)` asks the run to stop: without force it should get time to
   checkpoint (SIGTERM, a cancel request), with force it stops at once. Return True when the
   request was taken or the run is already gone, False when the service refused (the
   controller asks again at its next tick). It must not wait for the run to end.
5. `check_ready()` raises a MiTorchError naming what to fix when the executor cannot run
   trainings with the current settings; the controller calls it before it claims anything.
6. `free_gpu(busy)` picks a GPU for the next launch when the executor places runs on GPUs
   itself; the default (None) lets the executor's service decide.

An executor never writes to the job store: it returns what it knows and the controller records
it (mitorch.service.transitions owns every write of a training's status and attempt). Every write
of a run is fenced by its attempt, so a run the executor could not stop is harmless once its
training moved on.

Prove the executor with the conformance suite: subclass
mitorch.testing.executors.ExecutorConformance in your tests and provide its `harness` fixture
(see that module); fake only the outermost client of the service, never the executor's code.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

from mitorch.errors import MiTorchError

RunState = Literal["running", "waiting", "gone", "unknown"]
RUN_STATES: tuple[str, ...] = ("running", "waiting", "gone", "unknown")


class LaunchError(MiTorchError):
    """A run could not be started (no space, a bad interpreter, a refused submission, ...); the
    message says why in one line."""


@dataclass(frozen=True)
class Launched:
    """What a launch tells the controller to record on the training.

    Attributes:
        run_id: the run's id, unique to this launch; recorded as the training's `run_id`.
        link: a page where the user follows the run (AzureML studio), recorded as `studio_url`
            on the training and on its attempt; None when there is none.
        details: further fields recorded on the training, named by the executor
            (e.g. {"azureml_job": NAME}).
    """

    run_id: str
    link: str | None = None
    details: dict[str, str] = field(default_factory=dict)


class Executor(ABC):
    """Where trainings run; the module's docstring is the guide to writing one.

    Attributes:
        name: identity, KIND:WHERE; a controller reconciles and counts only its own executor's
            trainings.
        capacity: trainings at once.
    """

    name: str
    capacity: int

    @abstractmethod
    def launch(self, training: dict[str, Any], gpu: int | None = None) -> str | Launched:
        """Starts `mitrain --training-id ID --attempt N` for the training's current attempt (on
        that GPU) and returns without waiting for it.

        Returns:
            The run id, or a Launched with the run id and what else to record.

        Raises:
            LaunchError: the run could not be started; the message says why.
        """

    @abstractmethod
    def state(self, training: dict[str, Any]) -> RunState:
        """What the executor knows of the training's current run: "running", "waiting" (not
        started by its service yet), "gone" (ended or lost) or "unknown" (cannot tell)."""

    @abstractmethod
    def cancel(self, training: dict[str, Any], force: bool = False) -> bool:
        """Asks the training's run to stop (it checkpoints first); force: stops it at once.

        Returns:
            Whether the request was accepted (a run already gone counts as stopped); False when
            the executor's service refused it.
        """

    def free_gpu(self, busy: set[int]) -> int | None:
        """A GPU for the next launch that no running training uses; None: the executor decides."""
        return None

    def gone_reason(self, training: dict[str, Any]) -> str | None:
        """After state() said "gone": why, in one line, when the executor knows more than that
        the run ended (e.g. it cancelled a job stuck in its service); None otherwise."""
        return None

    def check_ready(self) -> None:
        """Checks, before a tick claims anything, that this executor can run trainings with the
        current settings (e.g. it can reach where artifacts go).

        Raises:
            MiTorchError: one line naming what to fix.
        """


def attempt_command(python: str, training: dict[str, Any]) -> list[str]:
    """The command that runs the training's current attempt, as every executor starts it."""
    return [python, "-m", "mitorch.cli.mitrain", "--training-id", training["id"], "--attempt", str(training["attempt"])]


def launched(result: str | Launched) -> Launched:
    """A launch's result as a Launched (a bare run id records nothing more)."""
    return result if isinstance(result, Launched) else Launched(run_id=result)
