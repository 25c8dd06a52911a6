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


def _cmd_flops(args: argparse.Namespace) -> int:
    from smelib import flops
    from smelib.models import names

    if args.table2:
        rows = flops.table2()
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        head = ["paper label", "our config", "paper GFLOPs", "ours (paper conv.)", "paper params M",
                "ours (paper conv.)", "true params M", "fvcore GMACs"]
        keys = ["paper_label", "config", "paper_gflops", "gflops_paper_convention", "paper_params_m",
                "params_m_paper_convention", "params_m_true", "gmacs_fvcore"]
        print(_format_rows(head, [[r[k] for k in keys] for r in rows]))
        print("\nGFLOPs in the paper's convention = 2 x thop multiply-adds at 1x3x512x512; "
              "the paper's numbers are the paper's, the rest are ours.")
        return 0
    if not args.model:
        raise CLIError("give a MODEL name or --table2")
    if args.model not in names():
        raise CLIError(f"unknown model {args.model!r}; see `smelib models`")
    height, width = args.size
    report = flops.cost_report(args.model, height, width, num_classes=args.num_classes)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(f"{args.model} at 1x3x{height}x{width}, {args.num_classes} classes")
    print(f"  true parameters              {report.params_m_true:10.3f} M")
    print(f"  thop parameters (paper)      {report.params_m_paper_convention:10.3f} M")
    print(f"  GFLOPs, paper convention     {report.gflops_paper_convention:10.3f} G  (2 x thop multiply-adds)")
    print(f"  fvcore multiply-adds         {report.gmacs_fvcore:10.3f} G")
    print(f"  fvcore + elementwise ops     {report.gmacs_fvcore_elementwise:10.3f} G")
    if args.by_module:
        rows = [[name, report.by_module_gmacs_fvcore.get(name, 0.0), report.by_module_gmacs_thop.get(name, 0.0)]
                for name in sorted(set(report.by_module_gmacs_fvcore) | set(report.by_module_gmacs_thop))]
        print()
        print(_format_rows(["module", "fvcore GMACs", "thop GMACs"], rows))
    return 0


def _format_rows(head: list[str], rows: list[list[object]]) -> str:
    """A plain fixed-width table; floats with three decimals."""
    cells = [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    return "\n".join(lines)


def _add_flops(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flops", help="parameters and FLOPs of a model; --table2 reproduces the paper's Table 2")
    p.add_argument("model", nargs="?", help="a registered model name (see `smelib models`)")
    p.add_argument("--table2", action="store_true", help="the paper's Table 2 beside our counts")
    p.add_argument("--size", nargs=2, type=int, default=[512, 512], metavar=("H", "W"),
                   help="input size (default 512 512, the paper's; NEU-Seg's native size is 200 200)")
    p.add_argument("--num-classes", type=int, default=4)
    p.add_argument("--by-module", action="store_true", help="per-module breakdown")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_flops)


# Every subcommand, in the order `smelib --help` lists them.
_SUBCOMMANDS = [_add_info, _add_models, _add_flops]


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
