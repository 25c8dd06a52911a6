"""The ``smelib`` command line: one subcommand per capability.

Each subcommand has an ``_add_<name>(subparsers)`` function that declares its arguments and sets ``func`` to
the function that runs it; :func:`main` only dispatches. Library work happens in the modules the commands
call, so everything the CLI does is also reachable from Python.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


class CLIError(Exception):
    """An error the user can fix (bad path, bad option); printed as one line, exit status 2."""


def _cmd_info(args: argparse.Namespace) -> int:
    import platform

    import torch

    from smelib import __version__
    from smelib.settings import data_root, quick_mode

    info = {
        "smelib": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda_available": torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
        "quick_mode": quick_mode(),
        "data_root": str(data_root()),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:15s} {value}")
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="versions, device, quick mode and the dataset root in use")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=_cmd_info)


def _cmd_models(args: argparse.Namespace) -> int:
    from smelib.models import names

    for name in names():
        print(name)
    return 0


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered model configurations")
    p.set_defaults(func=_cmd_models)


# Every subcommand, in the order `smelib --help` lists them.
_SUBCOMMANDS = [_add_info, _add_models]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used by the docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="smelib",
        description="SME-DeepLabV3+ for steel surface defect segmentation: models, data, training, counting.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``smelib`` console script; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as err:
        print(f"smelib {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
