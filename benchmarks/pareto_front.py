"""A measured Pareto front: a two-objective search job (top1_accuracy, maximized, against
num_parameters, minimized) over ResNet depth and learning rate on generated data, 6 trials, 2 at
once, run for real: misubmit stores the job, micontrol ticks (the local executor) train every
trial in its own process, and the front is what the job records and miquery shows.

    python benchmarks/pareto_front.py [--epochs 3]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import make_text_dataset  # noqa: E402

BIN = Path(sys.executable).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mitorch-pareto-") as folder:
        root = Path(folder)
        data = make_text_dataset(root / "data", num_train=96, num_val=24)
        env = {**os.environ, "MITORCH_DB_URI": f"sqlite:///{root / 'db.sqlite'}",
               "MITORCH_ARTIFACTS_URI": str(root / "art"), "MITORCH_LOCAL_CAPACITY": "2", "OMP_NUM_THREADS": "1"}
        job_file = root / "job.json"
        job_file.write_text(json.dumps({
            "job_type": "search", "name": "accuracy-vs-size",
            "overrides": [f"data.train={data.train}", f"data.val={data.val}", "image_size=32", "batch_size=8",
                          "data.num_workers=0", f"max_epochs={args.epochs}"],
            "search_space": {"model.depth": "18,34", "optimizer.lr": "0.1,0.03,0.01"},
            "objectives": [{"metric": "top1_accuracy"}, {"metric": "num_parameters"}],
            "sampler": {"name": "nsga2", "seed": 0}, "n_trials": 6, "max_concurrent": 2}))

        def command(*argv: str) -> str:
            done = subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=root, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.strip()}")
            return done.stdout

        job_id = command("misubmit", str(job_file)).split()[1]
        began = time.monotonic()
        while json.loads(command("miquery", job_id, "--json"))["job"]["status"] == "running":
            command("micontrol")
            time.sleep(2)
        print(f"6 trials, 2 at once, {args.epochs} epochs each: {time.monotonic() - began:.0f} s")
        print(command("miquery", job_id))


if __name__ == "__main__":
    main()
