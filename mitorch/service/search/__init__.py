"""Search jobs: Optuna hyper-parameter searches whose trials are queued trainings.

- job: the job file and its search space (read, checked, turned into Optuna distributions);
- step: one controller step of a job (ask, queue, follow, tell), under the jobs lease;
- journal: the study's storage, Optuna's journal kept in the job store.

Importing this package imports neither Optuna nor torch; job and journal import Optuna.
"""
