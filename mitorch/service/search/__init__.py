"""Search jobs: Optuna hyper-parameter searches whose trials are queued trainings.

- space: the search space in Hydra's sweeper syntax, as Optuna distributions, grids and points;
- job: the job file, its checked settings, sampler and pruner, the record misubmit stores, and
  more trials for a stored job (imports space);
- step: one controller step of a job (ask, queue, follow, tell, prune, end), under the jobs
  lease (imports job; opens the study through journal);
- journal: the study's storage, Optuna's journal kept in the job store;
- trials: a trial's state as users see it, its constraints met or not, the Pareto front (imports
  nothing: miquery shows trials with it);
- lease: the jobs lease that commands take to change a job (micontrol cancel takes it).

Importing this package, space, job, step, trials or lease imports neither Optuna nor torch
(misubmit, miquery and micontrol import them; trials and lease not even the config system); journal imports Optuna, and the step imports it when it runs.
"""
