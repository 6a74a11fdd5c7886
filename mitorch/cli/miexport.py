"""miexport: a weights file, or a search job's chosen trial, as an ONNX or TorchScript model ready to serve.

    miexport WEIGHTS -o model.onnx [--format onnx|torchscript]
    miexport --job JOB [--trial N] -o model.onnx [--format onnx|torchscript]
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from mitorch.cli._common import CommandParser, check_id, fail, parse
from mitorch.errors import MiTorchError, UsageError

PROG = "miexport"
EPILOG = """\
WEIGHTS is a file written by mitrain -o (it carries the config, the class names and the task
type). --job JOB exports the weights of the job's best trial (the one miquery JOB shows first),
or of trial N, from the job store ($MITORCH_DB_URI). Beside the model, OUT.json (the sidecar)
says how to feed it: task_type, image_size, resize, mean, std, class_names and the input and
output names; an ONNX file also holds these in its metadata_props. Before anything is written,
the export and PyTorch run on sample images; their outputs must agree (logits within 1e-4;
boxes within 0.01 pixel, scores within 1e-4, the same count and labels), or nothing is written
and the largest difference is named. mipredict OUT IMAGE... predicts with the exported file.
ONNX needs the export extra: pip install 'mitorch[export]'.
"""


def _parser() -> CommandParser:
    parser = CommandParser(PROG, "Export trained weights to ONNX or TorchScript, checked against PyTorch.",
                           epilog=EPILOG,
                           usage="miexport (WEIGHTS | --job JOB [--trial N]) -o OUT [--format onnx|torchscript]")
    parser.add_argument("weights", nargs="?", metavar="WEIGHTS", help="weights written by mitrain -o")
    parser.add_argument("-o", "--output", metavar="OUT", help="the file to write (and OUT.json beside it)")
    parser.add_argument("--format", choices=("onnx", "torchscript"), help="onnx (default) or torchscript")
    parser.add_argument("--job", metavar="JOB", help="a search job: export its best trial's weights")
    parser.add_argument("--trial", type=_trial, metavar="N", help="with --job: export trial N instead")
    return parser


def _trial(text: str) -> int:
    if not text.isdigit() or len(text) > 9:
        raise argparse.ArgumentTypeError(f"needs a trial number (0 or more), got {text[:40]!r}")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parse(parser, argv)
    try:
        if args.weights is None and args.job is None:
            parser.print_usage(sys.stderr)
            raise UsageError("give WEIGHTS or --job JOB; see miexport --help")
        if args.weights is not None and args.job is not None:
            raise UsageError("give WEIGHTS or --job JOB, not both")
        if args.trial is not None and args.job is None:
            raise UsageError("--trial N picks a trial of a search job; give --job JOB too")
        if not args.output:
            raise UsageError("-o OUT is needed: the file to write, e.g. -o model.onnx")
        if args.job is not None:
            check_id(args.job, "--job")
        weights, source = (args.weights, None) if args.job is None else _job_weights(args.job, args.trial)
        from mitorch.export import export

        done = export(weights, args.output, args.format or "onnx", source)
        shown = ", ".join(f"{name} {value:.2g}" for name, value in done.differences.items())
        print(f"{done.path} ({done.sidecar.name} beside it); largest differences from PyTorch: {shown}")
    except MiTorchError as e:
        fail(PROG, e)
    except KeyboardInterrupt:
        fail(PROG, MiTorchError("interrupted"), code=130)


def _job_weights(job_id: str, trial: int | None) -> tuple[str, dict[str, Any]]:
    """A local copy of the weights of a search job's best trial, or of its trial `trial`, and
    where they came from."""
    from mitorch.files import remote
    from mitorch.store import StoreError, open_store

    store = open_store()
    try:
        job = store.get_job(job_id)
        if job is None or job.get("job_type") != "search":
            raise StoreError(f"no search job {job_id}; miquery lists the jobs")
        training = _chosen_training(store, job, trial)
    finally:
        store.close()
    if training.get("status") != "completed" or not training.get("weights"):
        state = training.get("status")
        raise StoreError(f"training {training['id']} of job {job_id} has no weights to export (it is {state})")
    source = {"job_id": job_id, "trial_number": training.get("trial_number"), "training_id": training["id"]}
    return str(remote.fetch(training["weights"])), source


def _chosen_training(store: Any, job: dict[str, Any], trial: int | None) -> dict[str, Any]:
    if trial is None:
        best = job.get("best") or {}
        if len(job.get("objectives") or []) > 1 and not best.get("training_id"):
            raise UsageError(f"job {job['id']} weighs several objectives: it has a Pareto front, not one best "
                             f"trial; give --trial N (miquery {job['id']} shows the front)")
        if not best.get("training_id"):
            raise UsageError(f"job {job['id']} has no best trial yet (no completed trial); give --trial N "
                             f"(miquery {job['id']} lists its trials)")
        training = store.get_training(best["training_id"])
        if training is None:
            raise UsageError(f"the best trial's training {best['training_id']} is gone; give --trial N")
        return training
    for training in store.list_trainings(job_id=job["id"]):
        if training.get("trial_number") == trial:
            return store.get_training(training["id"]) or training
    # A reused trial has no training of its own: it was told the value of the training it reused.
    reused = next((entry for entry in job.get("reused") or () if entry.get("number") == trial), None)
    if reused is not None and (training := store.get_training(reused["reused_from"])) is not None:
        return training
    raise UsageError(f"job {job['id']} has no trial {trial}; miquery {job['id']} lists its trials")


if __name__ == "__main__":
    main()
