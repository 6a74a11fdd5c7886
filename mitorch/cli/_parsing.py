"""One parsing style and one help layout for every MiTorch command.

Every command builds a `CommandParser` (argparse): its help reads usage, a one-line
description, then the options; a usage error is one `PROG: error: ...` line and exit status 2.
The commands that compose a training config (mitrain, mitest, misubmit) also take the older form
`CONFIG [TRAIN VAL] [-w W] [-o OUT] [-d]`, key=value overrides in any order, and Hydra's own flags.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from mitorch.errors import UsageError
from mitorch.files.secrets import fail


class CommandParser(argparse.ArgumentParser):
    """argparse with MiTorch's help layout; errors raise UsageError (exit status 2) instead of exiting,
    so that callers and tests see one kind of user mistake."""

    def __init__(self, prog: str | None = None, description: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(prog=prog, description=description, allow_abbrev=False, **kwargs)

    def error(self, message: str) -> NoReturn:
        # A command line that lacks what the command needs shows how to call it.
        if message.startswith("the following arguments are required"):
            self.print_usage(sys.stderr)
        raise UsageError(message)


def parse(parser: CommandParser, argv: Sequence[str] | None, intermixed: bool = False) -> argparse.Namespace:
    """The parsed command line; a usage error is one line on stderr and exit status 2.

    Args:
        intermixed: positionals may come between options (key=value overrides in any order).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return _parse_intermixed(parser, argv) if intermixed else parser.parse_args(argv)
    except UsageError as e:
        fail(_prog(parser), e)


def _prog(parser: argparse.ArgumentParser) -> str:
    return (parser.prog or "").split()[0]


def _parse_intermixed(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Options and positionals in any order; an option the parser does not know is a usage error."""
    args, unknown = parser.parse_known_intermixed_args(argv)
    if unknown:
        raise UsageError(f"unknown option {unknown[0]}; see {_prog(parser)} --help")
    return args


# Hydra's own flags, passed through unchanged: long name -> (short names, nargs, choices, help).
_HYDRA_FLAGS: dict[str, tuple[tuple[str, ...], Any, Sequence[str] | None, str]] = {
    "--multirun": (("-m",), 0, None, "run (misubmit: queue) one training per combination of swept values"),
    "--cfg": (("-c",), None, ("job", "hydra", "all"), "print the resolved config and stop"),
    "--package": (("-p",), None, None, "with --cfg: print this package of the config only"),
    "--resolve": ((), 0, None, "with --cfg: resolve interpolations"),
    "--run": (("-r",), 0, None, "one run (the default)"),
    "--hydra-help": ((), 0, None, "Hydra's own help"),
    "--version": ((), 0, None, "Hydra's version"),
    "--info": (("-i",), "?", ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath"),
               "Hydra's information about the config"),
    "--shell-completion": (("-sc",), 0, None, "Hydra's shell completion"),
    "--config-path": (("-cp",), None, None, "Hydra: the primary config's folder"),
    "--config-name": (("-cn",), None, None, "Hydra: the primary config's name"),
    "--config-dir": (("-cd",), None, None, "Hydra: a further config folder"),
    "--experimental-rerun": ((), None, None, "Hydra: rerun a pickled run"),
}
_INFORMATIONAL = {"--hydra-help", "--version", "--info", "--shell-completion"}


class _HydraFlag(argparse.Action):
    """Keeps a Hydra flag, as its long name and value, for Hydra to read."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        flag = [self.option_strings[-1]] + ([] if values is None or values == [] else [values])
        namespace.hydra_flags = [*namespace.hydra_flags, *flag]


class _PathFlag(argparse.Action):
    """-w / -o of the older form: a path, made absolute where the command was run."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if not values:
            raise UsageError(f"{option_string} needs a path: {option_string} PATH")
        setattr(namespace, self.dest, os.path.abspath(os.path.expanduser(values)))


def training_parser(prog: str, description: str, usage: str, epilog: str = "",
                    hydra_flags: Sequence[str] = tuple(_HYDRA_FLAGS)) -> CommandParser:
    """A parser for a command that composes a training config.

    Args:
        hydra_flags: the long names of the Hydra flags the command takes.
    """
    parser = CommandParser(prog, description, usage=usage, epilog=epilog or None)
    parser.add_argument("words", nargs="*", metavar="CONFIG|key=value",
                        help="a JSON or YAML training config, TRAIN and VAL, and key=value overrides, in any order")
    older = parser.add_argument_group("the older form (each stands for an override)")
    older.add_argument("-w", "--weights", action=_PathFlag, nargs="?", metavar="PATH", help="weights=PATH")
    older.add_argument("-o", "--output", action=_PathFlag, nargs="?", metavar="PATH", help="output=PATH")
    older.add_argument("-d", "--fast-dev-run", action="store_true", help="fast_dev_run=true: one batch of each")
    hydra = parser.add_argument_group("Hydra's flags")
    parser.set_defaults(hydra_flags=[])
    for name in hydra_flags:
        shorts, nargs, choices, text = _HYDRA_FLAGS[name]
        hydra.add_argument(*shorts, name, action=_HydraFlag, nargs=nargs, choices=choices, dest="hydra_flags",
                           help=text, metavar="|".join(choices or ["VALUE"]))
    return parser


@dataclass
class CommandLine:
    """A parsed command line.

    Attributes:
        overrides: every override, in precedence order: CONFIG file < TRAIN/VAL/-w/-o/-d <
            key=value arguments; a key set twice keeps its last value.
        hydra_flags: Hydra's own flags, passed through unchanged.
        informational: only asks for help or information; nothing runs.
    """

    overrides: list[str] = field(default_factory=list)
    hydra_flags: list[str] = field(default_factory=list)
    multirun: bool = False
    informational: bool = False
    print_config: bool = False


def is_override(word: str) -> bool:
    """Whether a word of the command line is a Hydra override rather than a path."""
    return "=" in word or word.startswith("~")


def command_line(args: argparse.Namespace) -> CommandLine:
    """The overrides and Hydra flags of a command line that training_parser parsed.

    Raises:
        UsageError: a number of positional arguments that is neither CONFIG nor CONFIG TRAIN VAL.
        ConfigError: the CONFIG file is missing or does not parse.
    """
    # Imported here: the service commands share this module and never compose configs.
    from mitorch.config import config_file_overrides, format_value, merge

    positionals = [w for w in args.words if not is_override(w)]
    cli_overrides = [w for w in args.words if is_override(w)]
    if len(positionals) not in (0, 1, 3):
        raise UsageError(f"expected CONFIG or CONFIG TRAIN VAL, got {len(positionals)} positional arguments "
                         f"({' '.join(positionals)}); overrides take the form key=value")
    older = [f"data.{split}={format_value(os.path.abspath(os.path.expanduser(path)))}"
             for split, path in zip(("train", "val"), positionals[1:])]
    older += [f"{key}={format_value(getattr(args, key))}" for key in ("weights", "output")
              if getattr(args, key) is not None]
    older += ["fast_dev_run=true"] if args.fast_dev_run else []
    file_overrides = config_file_overrides(positionals[0], cli_overrides) if positionals else []
    flags = args.hydra_flags
    if "--multirun" in flags and {"--cfg", "--info"}.intersection(flags):
        shown = "--cfg" if "--cfg" in flags else "--info"
        raise UsageError(f"-m runs a sweep and {shown} prints one config; drop -m to see the config of one "
                         "combination (give its values instead of the lists)")
    return CommandLine(overrides=merge(file_overrides, older, cli_overrides), hydra_flags=list(flags),
                       multirun="--multirun" in flags, informational=bool(_INFORMATIONAL.intersection(flags)),
                       print_config="--cfg" in flags)


def parse_command_line(argv: list[str], prog: str) -> CommandLine:
    """Parses `PROG [CONFIG [TRAIN VAL]] [-w W] [-o O] [-d] [key=value ...] [hydra flags]`.

    Raises:
        UsageError: wrong number of positional arguments, an unknown option or a flag without its value.
        ConfigError: the CONFIG file is missing or does not parse.
    """
    parser = training_parser(prog, f"{prog}: compose a training config", usage=f"{prog} [CONFIG [TRAIN VAL]] ...")
    return command_line(_parse_intermixed(parser, argv))
