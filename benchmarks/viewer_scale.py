"""How miviewer's pages scale: 100 against 10,000 trainings (10 per-epoch results each, so
1,000 against 100,000 results) in the embedded SQLite store.

Served in-process through Starlette's TestClient (the whole app: guard, routing, templates), the
dashboard, the trainings page (first page; sorted by a metric; filtered by status, model and
text, sorted by a metric) and one training's page are each asked for --requests times after a
warm-up; the median and 95th percentile are printed with the ratio between the two sizes.
Targets: p95 under 200 ms, and at most 3x between the sizes. The trainings table is read once
when the viewer starts (its cold time is printed too) and refreshed every 2 s in the background,
as miviewer does.

    python benchmarks/viewer_scale.py [--requests 40]

Trainings are added through the store's API; the per-epoch results are written in one
transaction in the rows put_result writes (put_result commits each one: 100,000 commits would
take minutes and measure nothing the viewer does).
"""
from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import warnings
from datetime import timedelta
from pathlib import Path

from mitorch.store.base import now
from mitorch.store.sqlite import SQLiteStore, _encode

EPOCHS = 10
MODELS = [("resnet", 18), ("resnet", 50), ("mobilenet_v3", None), ("efficientnet", None)]


def fill(store: SQLiteStore, count: int, seed: int = 0) -> str:
    """count trainings (most finished, a few running and queued) with EPOCHS results each;
    returns the id of a completed one."""
    rng = random.Random(seed)
    start = now() - timedelta(days=30)
    trainings = []
    for i in range(count):
        model, depth = MODELS[i % len(MODELS)]
        status = rng.choices(["completed", "failed", "cancelled", "running", "new"], [80, 8, 5, 2, 5])[0]
        record = {"name": f"run {i}", "status": status, "priority": rng.choice([10, 50, 100]),
                  "dataset": {"name": f"set{i % 5}", "version": 1},
                  "config": {"task_type": "multiclass_classification", "max_epochs": EPOCHS, "batch_size": 32,
                             "model": {"_target_": f"mitorch.models.{model}", **({"depth": depth} if depth else {})},
                             "optimizer": {"_target_": "torch.optim.SGD", "lr": rng.choice([0.1, 0.01, 0.001])},
                             "data": {"train": None, "val": None, "num_workers": 2}},
                  "overrides": [f"optimizer.lr={rng.choice([0.1, 0.01])}"], "started_at": start + timedelta(minutes=i)}
        if status == "completed":
            record.update(metrics={"top1_accuracy": rng.random(), "top5_accuracy": rng.random(), "loss": rng.random()},
                          completed_at=start + timedelta(minutes=i + 30))
        if status == "failed":
            record["error"] = f"RuntimeError: CUDA out of memory ({i})"
        trainings.append(record)
    ids = store.add_trainings(trainings)
    rows = []
    for training_id, record in zip(ids, trainings):
        if record["status"] == "new":
            continue
        for epoch in range(1, EPOCHS + 1):
            result = {"epoch": epoch, "train_loss": rng.random(), "lr": 0.1 / epoch, "duration_s": 30.0,
                      "val": {"top1_accuracy": rng.random(), "top5_accuracy": rng.random(), "loss": rng.random(),
                              "average_precision": rng.random(), "num_samples": 500},
                      "training_id": training_id, "recorded_at": now()}
            rows.append((training_id, epoch, _encode(result)))
    with store._transaction() as db:
        db.executemany("INSERT OR REPLACE INTO training_results VALUES (?, ?, ?)", rows)
    return next(i for i, r in zip(ids, trainings) if r["status"] == "completed")


def measure(count: int, requests: int, folder: Path) -> dict[str, tuple[float, float]]:
    from starlette.testclient import TestClient

    from mitorch.viewer import Settings, create_app

    store = SQLiteStore(folder / f"viewer_{count}.db")
    started = time.perf_counter()
    training_id = fill(store, count)
    print(f"  {count} trainings stored in {time.perf_counter() - started:.1f} s")
    app = create_app(store, Settings(refresh_s=2.0))
    client = TestClient(app, base_url="http://127.0.0.1:8080")
    started = time.perf_counter()
    app.app.state.index.refresh()  # what miviewer does at start, in a thread
    print(f"  table read at start: {(time.perf_counter() - started) * 1000:.0f} ms")
    pages = {"dashboard": "/", "trainings": "/trainings", "trainings by metric": "/trainings?sort=top1_accuracy",
             "trainings filtered": "/trainings?status=completed&model=resnet&q=run+1&sort=top1_accuracy",
             "training": f"/trainings/{training_id}"}
    figures = {}
    for name, url in pages.items():
        for _ in range(3):
            assert client.get(url).status_code == 200, url
        times = []
        for _ in range(requests):
            started = time.perf_counter()
            answer = client.get(url)
            times.append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 200
        times.sort()
        figures[name] = (statistics.median(times), times[min(int(len(times) * 0.95), len(times) - 1)])
    store.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=40, help="timed requests per page and size (40)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # Starlette's notice about its test client's HTTP library
    with tempfile.TemporaryDirectory() as folder:
        print("filling the stores")
        small = measure(100, args.requests, Path(folder))
        large = measure(10_000, args.requests, Path(folder))
    print(f"\n{'page':<22}{'100: median':>13}{'p95':>9}{'10,000: median':>16}{'p95':>9}{'ratio median':>14}"
          f"{'ratio p95':>11}")
    for name in small:
        (m1, p1), (m2, p2) = small[name], large[name]
        print(f"{name:<22}{m1:>11.1f}ms{p1:>7.1f}ms{m2:>14.1f}ms{p2:>7.1f}ms{m2 / m1:>13.2f}x{p2 / p1:>10.2f}x")
    worst = max(p for _, p in large.values())
    ratio = max(large[n][0] / small[n][0] for n in small)
    print(f"\nworst p95 at 10,000: {worst:.1f} ms (target < 200 ms); worst median ratio: {ratio:.2f}x (target <= 3x)")


if __name__ == "__main__":
    main()
