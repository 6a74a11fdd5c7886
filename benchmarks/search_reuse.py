"""Epochs a search saves by reusing results: a search job of 30 trials over a small categorical
space (3 batch sizes x 2 optimizers x 2 schedules: 12 points), 10 epochs a training, run by the
real search step against the same search with reuse off.

Each training the step queues is completed at once with a value that depends on its point only
(as a deterministic training would give), so what is measured is how many trainings the search
queues, not how long they take. "Reuse off" gives every trial's training a fingerprint of its own,
so no trial matches an earlier training and every trial trains.

    python benchmarks/search_reuse.py [--trials 30] [--epochs 10] [--concurrent 2]
"""
from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mitorch.service.search import step as search  # noqa: E402
from mitorch.service.search.job import prepare  # noqa: E402
from mitorch.store.sqlite import SQLiteStore  # noqa: E402

SPACE = {"batch_size": "16,32,64", "optimizer": "sgd,adamw", "lr_scheduler": "cosine,step"}


def _value(config: dict) -> float:
    return config["batch_size"] / 100 + (0.2 if "AdamW" in config["optimizer"]["_target_"] else 0.0) + (
        0.05 if "Cosine" in config["lr_scheduler"]["_target_"] else 0.0)


def run(sampler: dict, trials: int, epochs: int, concurrent: int) -> tuple[int, int]:
    """(trainings queued, trials told) of one search job run to its end."""
    with tempfile.TemporaryDirectory(prefix="mitorch-reuse-") as folder:
        store = SQLiteStore(Path(folder) / "db.sqlite")
        job = {"job_type": "search", "overrides": [f"max_epochs={epochs}"], "search_space": SPACE,
               "sampler": sampler, "pruner": {"name": "none"}, "n_trials": trials, "max_concurrent": concurrent}
        job_id, _ = store.add_job(prepare(job, store, folder))
        for _ in range(10 * trials):
            search.step(store, lambda line: None)
            for training in store.list_trainings(["new"], job_id=job_id):
                store.update_training(training["id"], {"status": "completed",
                                                       "metrics": {"top1_accuracy": _value(training["config"])}})
            if store.get_job(job_id)["status"] != "running":
                break
        counts = (len(store.list_trainings(job_id=job_id)), store.get_job(job_id)["counts"]["complete"])
        store.close()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--concurrent", type=int, default=2)
    args = parser.parse_args()
    for sampler in ({"name": "tpe", "seed": 0}, {"name": "random", "seed": 0}):
        reused = run(sampler, args.trials, args.epochs, args.concurrent)
        with mock.patch("mitorch.service.fingerprint.fingerprint", lambda *a, **k: secrets.token_hex(16)):
            plain = run(sampler, args.trials, args.epochs, args.concurrent)
        saved = (plain[0] - reused[0]) * args.epochs
        print(f"{sampler['name']}: {args.trials} trials over {len(SPACE)} keys (12 points), {args.epochs} epochs a "
              f"training: with reuse {reused[0]} trainings ({reused[0] * args.epochs} epochs, {reused[1]} trials "
              f"told); without {plain[0]} ({plain[0] * args.epochs} epochs, {plain[1]} told); saved {saved} epochs "
              f"({saved / (plain[0] * args.epochs):.0%}), ratio {reused[0] / plain[0]:.2f}")


if __name__ == "__main__":
    main()
