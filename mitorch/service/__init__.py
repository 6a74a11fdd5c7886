"""The service: queued trainings run by executors that a periodic controller dispatches."""
