"""The training engine: loop, evaluation, schedules, tasks and progress reporting."""
