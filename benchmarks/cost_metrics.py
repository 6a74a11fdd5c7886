"""What measuring a trained model's costs adds to a training: the same training (generated data,
one epoch, no workers) with cost_metrics=true against cost_metrics=false, in this process, and the
seconds measure_costs takes alone for a few models and sizes.

    python benchmarks/cost_metrics.py [--image-size 64] [--batch-size 32] [--repeats 3]
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import mitorch  # noqa: E402
from mitorch import build  # noqa: E402
from mitorch.engine.costs import measure_costs  # noqa: E402
from mitorch.engine.progress import PlainProgress  # noqa: E402
from tests.helpers import make_text_dataset  # noqa: E402


def _training_seconds(overrides: list[str]) -> tuple[float, dict]:
    began = time.perf_counter()
    metrics = mitorch.train(mitorch.compose(overrides), progress=PlainProgress(stream=io.StringIO(), interval_s=1e9))
    return time.perf_counter() - began, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mitorch-costs-") as folder:
        data = make_text_dataset(Path(folder) / "data", num_train=128, num_val=32)
        common = [f"data.train={data.train}", f"data.val={data.val}", f"image_size={args.image_size}",
                  f"batch_size={args.batch_size}", "data.num_workers=0", "max_epochs=1"]
        _training_seconds([*common, "cost_metrics=false"])  # warm-up: imports, first allocations
        without = [_training_seconds([*common, "cost_metrics=false"])[0] for _ in range(args.repeats)]
        timed = [_training_seconds([*common, "cost_metrics=true"]) for _ in range(args.repeats)]
    plain, measured = statistics.median(without), statistics.median(t for t, _ in timed)
    print(f"resnet18, {args.image_size} px, batch {args.batch_size}, 1 epoch of 128 images: {plain:.2f} s without, "
          f"{measured:.2f} s with cost metrics (+{measured - plain:.2f} s, ratio {measured / plain:.3f})")
    print("  " + ", ".join(f"{key} {value}" for key, value in timed[-1][1].items() if key not in
                           ("average_precision", "top1_accuracy", "top5_accuracy", "loss", "num_samples")))
    device = torch.device("cpu")
    for model, size, batch in (("resnet", 224, 32), ("mobilenet_v3", 224, 32), ("resnet", 64, 32)):
        network = build.build_model(mitorch.compose([f"model={model}"]), num_classes=10)
        began = time.perf_counter()
        costs = measure_costs(network, size, batch, device, detection=False)
        print(f"measure_costs {model} at {size} px, batch {batch}: {time.perf_counter() - began:.2f} s "
              f"(macs {costs['macs']:,}, latency_ms_b1 {costs['latency_ms_b1']}, "
              f"latency_ms_batch {costs['latency_ms_batch']})")


if __name__ == "__main__":
    main()
