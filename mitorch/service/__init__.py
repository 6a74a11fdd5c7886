"""The service: queued trainings run by executors that a periodic controller dispatches.

Its named parts, each importing only parts listed before it:
- leases: the lease helper (take, keep, release) that fences work done once across hosts;
- executors/: where trainings run; base.py is the contract, local.py, azureml.py, slurm.py;
- transitions: every move of a training's status and attempt (the table MOVES), each write fenced;
- labels: what a training's tags and notes may be (misubmit --tag, micontrol tag and note);
- submit: what misubmit stores (configs composed and checked, datasets pinned);
- search/: search jobs (space, job file, the controller's step, the Optuna journal);
- controller: the tick (reconcile this executor's trainings, step search jobs, dispatch);
- runner: the training side, `mitrain --training-id ID --attempt N`;
- manage, retention: micontrol's actions (cancel, requeue, set-priority) and gc.
"""
