"""The ``smelib`` command line: one entry point, two groups of subcommands.

The product commands (:mod:`smelib.tools.commands`) are the library's capabilities; the study commands
(:mod:`smelib.study.commands`) exist for this book's reproduction of the paper. ``smelib --help`` lists the two
groups apart. This module only assembles the parser and dispatches.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence

from smelib.study import commands as study
from smelib.tools import commands as product
from smelib.tools.commands import CLIError


def _group_text(title: str, sub: argparse._SubParsersAction, names: Sequence[str]) -> str:
    helps = {a.dest: (a.help or "").replace("%%", "%") for a in sub._choices_actions}
    width = max(len(n) for n in names) + 2
    rows = [textwrap.fill(helps.get(n, ""), 100, initial_indent=f"  {n:<{width}}", subsequent_indent=" " * (width + 2))
            for n in names]
    return "\n".join([f"{title}:", *rows])


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used by the docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="smelib",
        usage="smelib [-h] COMMAND ...",
        description="SME-DeepLabV3+ for steel surface defect segmentation: models, data, training, counting.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", help=argparse.SUPPRESS, prog="smelib")
    sub.required = True
    groups = []
    for title, adders in (("product commands (the library)", product.PRODUCT_COMMANDS),
                          ("study commands (this book's reproduction of the paper)", study.STUDY_COMMANDS)):
        before = list(sub.choices)
        for add in adders:
            add(sub)
        groups.append((title, [n for n in sub.choices if n not in before]))
    parser.epilog = "\n\n".join(_group_text(title, sub, names) for title, names in groups) + \
        "\n\n`smelib COMMAND --help` for a command's options."
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
