"""The service: queued trainings run by executors that a periodic controller dispatches.

Its named parts, each importing only those listed before it:
- leases: the lease helper (take, keep, release) that fences work done once across hosts;
- transitions: every move of a training's status and attempt (the table MOVES), each write fenced;
- executors/: where trainings run; base.py is the contract, local.py, azureml.py, slurm.py;
- search/: search jobs (space, job file, the controller's step, the Optuna journal);
- controller: the tick (reconcile this executor's trainings, step search jobs, dispatch);
- runner: the training side, `mitrain --training-id ID --attempt N`;
- submit, manage, retention: what misubmit and micontrol's actions (cancel, requeue,
  set-priority, gc) do.
"""
