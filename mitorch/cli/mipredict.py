"""mipredict: run trained weights, or a model miexport wrote, on image files; one JSON line per image.

    mipredict CONFIG WEIGHTS IMAGE... [-o DIR] [--threshold T] [key=value ...]
    mipredict MODEL IMAGE... [-o DIR] [--threshold T]      MODEL: miexport's .onnx or TorchScript file
"""
from __future__ import annotations

import argparse
import json

from mitorch.cli._common import CommandParser, fail, parse
from mitorch.errors import MiTorchError, UsageError

PROG = "mipredict"
EPILOG = """\
CONFIG is the training config (JSON or YAML; it picks the model, image size and task type),
WEIGHTS a file written by mitrain -o (it carries the class names). IMAGE may be a zip member
(images.zip@a.jpg); key=value overrides may come anywhere. Each line is {"image", "boxes":
[{"class", "index", "score", "box"}]} for object detection (box = [xmin, ymin, xmax, ymax] in
the image's pixels) or {"image", "classes": [{"class", "index", "score"}]} for classification
(the top 5, or the labels over the threshold for multilabel).
Instead of CONFIG WEIGHTS, MODEL may be a file that miexport wrote (ONNX or TorchScript, with
its sidecar MODEL.json, which gives the preprocessing and the class names): the same lines come
from ONNX Runtime or TorchScript.
"""


def _parser() -> CommandParser:
    parser = CommandParser(PROG, "Run trained weights on images; prints one JSON line per image.", epilog=EPILOG,
                           usage="mipredict CONFIG WEIGHTS IMAGE... [-o DIR] [--threshold T] [key=value ...]")
    parser.add_argument("config", metavar="CONFIG", help="the training config (JSON or YAML)")
    parser.add_argument("weights", metavar="WEIGHTS", help="weights written by mitrain -o")
    return _images_and_output(parser)


def _images_and_output(parser: CommandParser) -> CommandParser:
    """The arguments both forms of mipredict take after the model: images, -o and --threshold."""
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="an image file, or a zip member (a.zip@b.jpg)")
    parser.add_argument("-o", "--output", metavar="DIR", help="also write each image with its predictions drawn")
    parser.add_argument("--threshold", type=_threshold, metavar="T",
                        help="the least score shown (default 0.5 for boxes and multilabel classes)")
    return parser


def _threshold(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"needs a number, got {text[:40]!r}") from None


def _exported_parser() -> CommandParser:
    parser = CommandParser(PROG, "Run a model that miexport wrote on images; prints one JSON line per image.",
                           epilog=EPILOG, usage="mipredict MODEL IMAGE... [-o DIR] [--threshold T]")
    parser.add_argument("model", metavar="MODEL", help="an .onnx or TorchScript file that miexport wrote")
    return _images_and_output(parser)


def _is_exported(word: str) -> bool:
    """Whether word names a model that miexport wrote (it has miexport's sidecar)."""
    import os

    sidecar = f"{word}.json"
    if word.startswith("-") or "=" in word or not os.path.isfile(sidecar):
        return False
    try:
        with open(sidecar) as file:
            return json.load(file).get("format", "").startswith("mitorch-export")
    except (OSError, ValueError, AttributeError):
        return False


def main(argv: list[str] | None = None) -> None:
    import sys

    words = sys.argv[1:] if argv is None else list(argv)
    if any(_is_exported(word) for word in words):
        _main_exported(words)
        return
    args = parse(_parser(), argv, intermixed=True)
    try:
        positionals, overrides = _split([args.config, args.weights, *args.images])
        if len(positionals) < 3:
            raise UsageError("mipredict needs CONFIG WEIGHTS IMAGE...; see mipredict --help")
        config, weights, *images = positionals
        from pathlib import Path

        from mitorch.config import compose, config_file_overrides, format_value, merge
        from mitorch.predict import Predictor

        weights_path = str(Path(weights).expanduser().resolve())
        cfg = compose(merge(config_file_overrides(config, overrides), overrides,
                            [f"weights={format_value(weights_path)}"]))
        _predict(Predictor(cfg, args.threshold), images, args.output)
    except MiTorchError as e:
        fail(PROG, e)
    except KeyboardInterrupt:
        fail(PROG, MiTorchError("interrupted"), code=130)


def _main_exported(words: list[str]) -> None:
    args = parse(_exported_parser(), words, intermixed=True)
    try:
        if not _is_exported(args.model):
            raise UsageError(f"{args.model} comes before the exported model; an exported model carries its "
                             "preprocessing and class names: mipredict MODEL IMAGE... (without CONFIG)")
        if any("=" in image and "@" not in image.split("=", 1)[0] for image in args.images):
            raise UsageError("an exported model takes no config overrides: its sidecar fixes the image size "
                             "and preprocessing; export the weights again to change them")
        from mitorch.predict import ExportedPredictor

        _predict(ExportedPredictor(args.model, args.threshold), args.images, args.output)
    except MiTorchError as e:
        fail(PROG, e)
    except KeyboardInterrupt:
        fail(PROG, MiTorchError("interrupted"), code=130)


def _predict(predictor, images: list[str], output: str | None) -> None:
    """One JSON line per image; with output, the image with its predictions drawn too."""
    from pathlib import Path

    from mitorch.predict import draw, picture_path

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


def _split(words: list[str]) -> tuple[list[str], list[str]]:
    """(CONFIG, WEIGHTS and IMAGEs; key=value overrides), in order: a zip member's '@' comes
    before any '=' of its name, an override's key never holds one."""
    positionals, overrides = [], []
    for word in words:
        is_override = "=" in word and "@" not in word.split("=", 1)[0]
        (overrides if is_override else positionals).append(word)
    return positionals, overrides


if __name__ == "__main__":
    main()
