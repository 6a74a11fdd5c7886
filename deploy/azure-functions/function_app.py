"""An Azure Function that runs one `micontrol` tick with the AzureML executor every 5 minutes.

It is the serverless twin of deploy/systemd/micontrol.timer: the same tick, with each action
logged as one line. See README.md here for the settings and the steps to publish it.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import azure.functions as func

# NCRONTAB (with seconds): every 5 minutes, as the seed recommends for the controller.
SCHEDULE = "0 */5 * * * *"
HERE = Path(__file__).resolve().parent

app = func.FunctionApp()


@app.timer_trigger(schedule=SCHEDULE, arg_name="timer", run_on_startup=False, use_monitor=True)
def micontrol_tick(timer: func.TimerRequest) -> None:
    """One controller tick: reconcile the AzureML jobs of running trainings, then dispatch queued
    ones while the compute cluster has room."""
    if timer.past_due:
        logging.warning("micontrol: this tick is late (the previous one ran long, or the app was idle)")
    run_tick(lambda line: logging.info("micontrol: %s", line))


def run_tick(say: Callable[[str], None]) -> list[str]:
    """One tick with the AzureML executor; returns its actions, one line each.

    Raises:
        MiTorchError: a setting is missing or wrong, or the store or AzureML refused; logged
            first as one line (the invocation then shows as failed).
    """
    _defaults()
    from mitorch.errors import MiTorchError
    from mitorch.service.executors.azureml import AzureMLExecutor
    from mitorch.service.controller import tick
    from mitorch.store import open_store

    try:
        store = open_store()
        try:
            return tick(store, AzureMLExecutor(), say=say)
        finally:
            store.close()
    except MiTorchError as e:
        logging.error("micontrol: error: %s", " ".join(str(e).split()))
        raise


def _defaults() -> None:
    """The app's own places: the wheel published beside this file is what jobs install (a
    Function has no MiTorch source tree to build one from), and the cache goes to /tmp (the
    app's files are read-only when it runs from a package); the executor's job clocks go to /home."""
    wheels = sorted((HERE / "wheels").glob("mitorch-*.whl"))
    if wheels and not os.environ.get("MITORCH_AML_WHEEL", "").strip():
        os.environ["MITORCH_AML_WHEEL"] = str(wheels[-1])
    os.environ.setdefault("MITORCH_CACHE_DIR", "/tmp/mitorch-cache")
    # When each AzureML job was first seen stuck or waiting is kept between ticks: /home is the
    # app's persistent, writable share on Azure Functions (/tmp is per instance).
    os.environ.setdefault("XDG_DATA_HOME", "/home/data")
