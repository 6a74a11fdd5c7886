"""midataset: register datasets in the job store and look them up.

    midataset register FILE               upsert every entry of a JSON list, all or none
    midataset list [--json]
    midataset show NAME [--version V] [--json]
"""
from __future__ import annotations

from typing import Any

from mitorch.cli._common import CommandParser, fail, parse, to_json
from mitorch.errors import MiTorchError
from mitorch.files.secrets import redact

PROG = "midataset"
EPILOG = """\
A registration FILE is a JSON list of {"name", "version", "train": {"path", "support_files"},
"val": {...}}; versions are whole numbers from 0. Paths are local paths (relative to FILE),
https URLs, or Azure Blob URLs with a SAS token. SAS tokens are kept in the credentials file
($MITORCH_CREDENTIALS, else ~/.config/mitorch/credentials.json, readable by you only), never in
the job store; URLs are shown without them. Queue a training on a dataset with
misubmit --dataset NAME[:VERSION].
"""


def _parser() -> CommandParser:
    parser = CommandParser(PROG, "Register datasets in the job store and look them up.", epilog=EPILOG)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{register,list,show}")
    register = commands.add_parser("register", help="register (or replace) the datasets of a JSON file",
                                   description="Register (or replace) the datasets of a JSON file, all or none.")
    register.add_argument("file", metavar="FILE", help="a JSON list of datasets")
    listing = commands.add_parser("list", help="every registered dataset version",
                                  description="List every registered dataset version.")
    listing.add_argument("--json", action="store_true", help="print JSON for scripts")
    show = commands.add_parser("show", help="one dataset (its highest version unless --version)",
                               description="Show one dataset (its highest version unless --version).")
    show.add_argument("name", metavar="NAME", help="a registered dataset name")
    show.add_argument("--version", help="a whole number from 0")
    show.add_argument("--json", action="store_true", help="print JSON for scripts")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parse(_parser(), argv)
    try:
        from mitorch.store import StoreError, open_store

        if args.command == "register":
            from mitorch.files.datasets import read_registration

            records = read_registration(args.file)
            store = open_store()
            store.put_datasets(records)
            for record in records:
                print(f"registered {record['name']}:{record['version']}")
            return
        if args.command == "show":
            from mitorch.files.datasets import check_name

            check_name(args.name, "NAME")  # before the store is asked
        store = open_store()
        if args.command == "list":
            datasets = store.list_datasets()
        else:
            from mitorch.files.datasets import parse_version

            if args.version is not None:
                args.version = parse_version(args.version)
            dataset = store.get_dataset(args.name, args.version)
            if dataset is None:
                shown = args.name if args.version is None else f"{args.name} version {args.version}"
                raise StoreError(f"dataset {shown} is not registered; see midataset list")
            datasets = [dataset]
    except MiTorchError as e:
        fail(PROG, e)
    if args.json:
        print(redact(to_json(datasets if args.command == "list" else datasets[0])))
    elif args.command == "list":
        _table(datasets)
    else:
        _details(datasets[0])


def _split(split: dict[str, Any]) -> str:
    extra = len(split.get("support_files", []))
    return redact(split["path"] + (f" (+{extra} file{'s' * (extra != 1)})" if extra else ""))


def _table(datasets: list[dict[str, Any]]) -> None:
    from mitorch.cli.views import Line, Table, render

    if not datasets:
        render([Line("no datasets registered; add some with midataset register FILE")])
        return
    table = Table("datasets", ["name", "version", "train", "val", "registered"])
    for d in datasets:
        table.add(redact(str(d["name"])), d["version"], _split(d["train"]), _split(d["val"]),
                  d["registered_at"].strftime("%Y-%m-%d %H:%M"))
    render([table])


def _details(dataset: dict[str, Any]) -> None:
    from mitorch.cli.views import Line, render

    lines = [Line(f"{redact(str(dataset['name']))} version {dataset['version']}, registered "
                  f"{dataset['registered_at']:%Y-%m-%d %H:%M:%S}")]
    if dataset.get("description"):
        lines.append(Line(redact(str(dataset["description"]))))
    for split in ("train", "val"):
        lines.append(Line(f"{split}: {redact(dataset[split]['path'])}"))
        lines += [Line(f"  {redact(f)}") for f in dataset[split].get("support_files", [])]
    render(lines)


if __name__ == "__main__":
    main()
