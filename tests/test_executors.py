"""The executor conformance suite (mitorch.testing.executors) on the local executor: real
processes on this machine. What runs in them stands in for `mitrain --training-id ID --attempt N`
(a shell script given as the executor's interpreter), so the suite tests the executor, not a
training."""
from __future__ import annotations

import os
import signal
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mitorch.service.executors import LocalExecutor
from mitorch.store.sqlite import SQLiteStore
from mitorch.testing.executors import ExecutorConformance, ExecutorHarness

# Called as `RUN -m mitorch.cli.mitrain --training-id ID --attempt N`: runs until its end file
# appears or it is sent SIGTERM (as a training checkpoints and stops).
_RUN = """#!/bin/sh
trap 'exit 143' TERM
while [ ! -e "{ends}/$4-$6" ]; do sleep 0.05; done
"""


class LocalHarness(ExecutorHarness):
    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ends = tmp_path / "ends"
        self.ends.mkdir()
        run = tmp_path / "run.sh"
        run.write_text(_RUN.format(ends=self.ends))
        run.chmod(run.stat().st_mode | stat.S_IXUSR)
        self.monkeypatch = monkeypatch
        monkeypatch.setenv("MITORCH_LOCAL_PYTHON", str(run))
        monkeypatch.setenv("MITORCH_ARTIFACTS_URI", str(tmp_path / "art"))
        monkeypatch.setenv("MITORCH_HOSTNAME", "conformance-host")
        self.store = SQLiteStore(tmp_path / "db.sqlite")
        self.executor = LocalExecutor(capacity=2)

    def end(self, training: dict[str, Any], killed: bool = False) -> None:
        if killed:
            pid = int(training["run_id"].split(":")[2])
            os.kill(pid, signal.SIGKILL)
        else:
            (self.ends / f"{training['id']}-{training['attempt']}").touch()

    def out_of_sight(self, training: dict[str, Any]) -> dict[str, Any]:
        return {**training, "run_id": "local:another-host:4242:77"}

    @contextmanager
    def failing_launch(self) -> Iterator[None]:
        with self.monkeypatch.context() as patch:
            patch.setenv("MITORCH_LOCAL_PYTHON", str(self.ends / "no-such-interpreter"))
            yield


class TestLocalExecutor(ExecutorConformance):
    @pytest.fixture
    def harness(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHarness]:
        harness = LocalHarness(tmp_path, monkeypatch)
        yield harness
        for training in harness.store.list_trainings():  # no run outlives its test
            if training.get("run_id"):
                harness.executor.cancel(training, force=True)
        harness.store.close()
