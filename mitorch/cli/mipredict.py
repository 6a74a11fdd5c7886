"""mipredict: run trained weights on image files; one JSON line per image.

    mipredict CONFIG WEIGHTS IMAGE... [-o DIR] [--threshold T] [key=value ...]
"""
from __future__ import annotations

import json
import sys

from mitorch.cli._common import UsageError, fail, help_requested, take_options
from mitorch.errors import MiTorchError

PROG = "mipredict"
USAGE = """\
mipredict: run trained weights on images; prints one JSON line per image.

Usage:
  mipredict CONFIG WEIGHTS IMAGE... [-o DIR] [--threshold T] [key=value ...]

CONFIG is the training config (JSON or YAML; it picks the model, image size and task type),
WEIGHTS a file written by mitrain -o (it carries the class names). IMAGE may be a zip member
(images.zip@a.jpg). Each line is {"image", "boxes": [{"class", "index", "score", "box"}]} for
object detection (box = [xmin, ymin, xmax, ymax] in the image's pixels) or {"image", "classes":
[{"class", "index", "score"}]} for classification (the top 5, or the labels over the
threshold for multilabel). --threshold: the least score shown (default 0.5 for boxes and
multilabel classes). -o DIR also writes each image with its boxes or top classes drawn on it.
"""


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        argv = ["--help"]
    if help_requested(argv, USAGE):
        return
    try:
        positionals, overrides, output, threshold = _parse(argv)
        if len(positionals) < 3:
            raise UsageError("mipredict needs CONFIG WEIGHTS IMAGE...; see mipredict --help")
        config, weights, *images = positionals
        from pathlib import Path

        from mitorch.config import compose, config_file_overrides, format_value, merge
        from mitorch.predict import Predictor, draw, picture_path

        weights_path = str(Path(weights).expanduser().resolve())
        cfg = compose(merge(config_file_overrides(config, overrides), overrides,
                            [f"weights={format_value(weights_path)}"]))
        predictor = Predictor(cfg, threshold)
        folder = Path(output) if output else None
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        taken: set[str] = set()
        for path in images:
            image = predictor.load(path)
            prediction = predictor.predict(image)
            print(json.dumps({"image": path, **prediction}), flush=True)
            if folder is not None:
                draw(image, prediction).save(picture_path(folder, path, taken))
    except MiTorchError as e:
        fail(PROG, e)
    except KeyboardInterrupt:
        fail(PROG, MiTorchError("interrupted"), code=130)


def _parse(argv: list[str]) -> tuple[list[str], list[str], str | None, float | None]:
    options, rest = take_options(argv, {"-o": ("output", "a value"), "--output": ("output", "a value"),
                                        "--threshold": ("threshold", "a value")})
    threshold = None
    if options["threshold"] is not None:
        try:
            threshold = float(options["threshold"])
        except ValueError:
            raise UsageError(f"--threshold needs a number, got {options['threshold']!r}") from None
    positionals, overrides = [], []
    for arg in rest:
        if "=" in arg and not arg.startswith("-") and "@" not in arg.split("=", 1)[0]:
            overrides.append(arg)
        elif arg.startswith("-"):
            raise UsageError(f"unknown option {arg}; see mipredict --help")
        else:
            positionals.append(arg)
    return positionals, overrides, options["output"], threshold


if __name__ == "__main__":
    main()
