"""Importable conformance suites for MiTorch's pluggable parts, as `optuna.testing` is for
Optuna's storages: `store` (JobStore backends) and `executors` (where trainings run). A new
backend or executor subclasses the suite in its own tests and provides its fixtures.

These modules import pytest: they are for tests, never imported by MiTorch's commands.
"""
