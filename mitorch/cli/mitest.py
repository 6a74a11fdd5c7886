"""mitest: evaluate weights on a validation set; prints the metrics as one JSON line.

    mitest CONFIG TRAIN VAL -w WEIGHTS [-d] [--predictions DIR] [key=value ...]
    mitest weights=W [data.train=T data.val=V] [key=value ...]
"""
from __future__ import annotations

from mitorch.cli._common import CommandParser, fail, parse, training_parser
from mitorch.cli._parsing import command_line
from mitorch.errors import MiTorchError

PROG = "mitest"
USAGE = """\
mitest CONFIG TRAIN VAL -w WEIGHTS [-d] [--predictions DIR] [key=value ...]
       mitest -w WEIGHTS [data.train=TRAIN data.val=VAL] [--predictions DIR] [key=value ...]
       mitest --cfg job [...]              print the resolved config"""
EPILOG = """\
CONFIG is a JSON or YAML training config, TRAIN/VAL text files or image folders (none: the
built-in dataset). -w WEIGHTS is a MiTorch output (-o of mitrain) or a torchvision state dict.
-d evaluates one batch. Class names come from the weights when they carry them, else from TRAIN.
Precedence: group defaults < CONFIG < command-line overrides.
--predictions DIR (object_detection) also writes DIR/predictions.json (COCO results) and
DIR/ground_truth.json (COCO instances of the evaluated images), for any COCO tool to re-score.
The last line on stdout is the metrics as JSON.
"""


def _parser() -> CommandParser:
    parser = training_parser(PROG, "Evaluate trained weights on a validation set.", USAGE, EPILOG,
                             hydra_flags=("--cfg",))
    parser.add_argument("--predictions", metavar="DIR", help="also write COCO predictions and ground truth here")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parse(_parser(), argv, intermixed=True)
    try:
        command = command_line(args)
        from omegaconf import OmegaConf

        from mitorch.config import compose

        cfg = compose(command.overrides)
        if command.print_config:
            print(OmegaConf.to_yaml(cfg), end="")
            return
        from mitorch import api

        metrics = api.evaluate(cfg, predictions_dir=args.predictions)
    except MiTorchError as e:
        fail(PROG, e)
    except KeyboardInterrupt:
        fail(PROG, MiTorchError("interrupted"), code=130)
    api.print_metrics(metrics)


if __name__ == "__main__":
    main()
