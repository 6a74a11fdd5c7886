"""Executors run trainings: launch one attempt, tell what is known of its run, stop it.

base.py is the contract (and the guide to writing an executor), local.py runs processes on this
machine, azureml.py runs AzureML command jobs (imported only when chosen: it needs the azure
extra).
"""
from __future__ import annotations

from mitorch.service.executors.base import RUN_STATES, Executor, LaunchError, Launched, RunState, launched
from mitorch.service.executors.local import LocalExecutor, local_host

__all__ = ["RUN_STATES", "Executor", "LaunchError", "Launched", "LocalExecutor", "RunState", "launched",
           "local_host"]
