"""Hydra launchers of MiTorch: `hydra/launcher=mitorch_queue` queues sweep runs in the job store."""
