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


# ---------------------------------------------------------------------------------------------------------------
# train, eval, predict, reproduce, results (the engine: smelib.engine, smelib.results)
# ---------------------------------------------------------------------------------------------------------------


def _engine_errors():
    """The library errors a user can fix, to be reported as one line (CLIError) by the training commands."""
    from smelib.checkpoint import CheckpointError
    from smelib.config import ConfigError
    from smelib.records import RunDirError

    return (ConfigError, CheckpointError, RunDirError, FileNotFoundError, NotADirectoryError)


def _train_config(args: argparse.Namespace) -> dict | None:
    """The resolved config of ``smelib train``/``reproduce``: the file, the flags, then ``key=value`` overrides."""
    from smelib.config import load_config

    flags = [("model.name", args.model), ("data.root", args.data_root), ("data.num_classes", args.num_classes),
             ("train.epochs", args.epochs), ("train.max_steps", args.max_steps), ("train.seed", args.seed),
             ("data.split", args.split)]
    overrides = [(key, value) for key, value in flags if value is not None] + list(args.overrides)
    if args.config is None:
        if args.resume:
            return load_config(None, overrides) if overrides else None
        raise CLIError("give --config FILE (e.g. configs/quick.yaml)")
    return load_config(args.config, overrides)


def _cmd_train(args: argparse.Namespace) -> int:
    from smelib.engine import TrainingDiverged, train

    try:
        cfg = _train_config(args)
        if cfg is not None and args.config is None and args.resume:
            cfg = None  # a resumed run uses its own config; overrides without --config are refused below
        if args.resume and args.config is None and (args.overrides or any(
                v is not None for v in (args.model, args.epochs, args.max_steps, args.seed, args.split))):
            raise CLIError("with --resume and no --config, give no overrides: the run continues with its own config")
        result = train(cfg, out=args.out, runs_dir=args.runs, resume=args.resume, quiet=args.quiet)
    except _engine_errors() as err:
        raise CLIError(str(err)) from None
    except TrainingDiverged as err:
        print(f"smelib train: {err}", file=sys.stderr)
        return 1
    final = result.record.get("final", {})
    summary = {"run_dir": str(result.run_dir), "checkpoint": str(result.checkpoint),
               "images_per_s": result.record.get("images_per_s")}
    for part in ("val", "test"):
        if part in final:
            summary[f"{part}_miou"] = final[part]["miou"]
            summary[f"{part}_miou_defects"] = final[part]["defects_only"]["miou"]
    print(json.dumps(summary, indent=2))
    return 0


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="a YAML config (configs/quick.yaml, configs/cpu_budget.yaml, configs/paper.yaml)")
    p.add_argument("--model", help="model name (model.name)")
    p.add_argument("--data-root", help="dataset folder, NEU-Seg or VOC layout (data.root)")
    p.add_argument("--num-classes", type=int, help="classes including background (data.num_classes)")
    p.add_argument("--epochs", type=int, help="train.epochs")
    p.add_argument("--max-steps", type=int, help="stop after N optimiser steps (train.max_steps)")
    p.add_argument("--seed", type=int, help="train.seed")
    p.add_argument("--split", choices=["official", "grouped"], help="data.split")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=3e-3")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a config; writes checkpoints, log.csv and record.json")
    _add_train_flags(p)
    p.add_argument("--out", help="the run directory (new, or the one to --resume); default results/runs/<run_id>")
    p.add_argument("--runs", help="parent folder of new run directories (default results/runs)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.set_defaults(func=_cmd_train)


def _eval_dataset(meta: dict, data_root: str | None, split: str, limit: int | None):
    """The checkpoint's dataset subset (its config's split and validation carve-out), optionally re-rooted."""
    import copy

    from smelib.loading import load_data

    cfg = copy.deepcopy(meta["config"])
    if data_root is not None:
        cfg["data"]["root"] = data_root
    if limit is not None:
        cfg["data"]["limit"] = limit
    bundle = load_data(cfg, seed=int(cfg["train"]["seed"]))
    dataset = bundle.test if split == "test" else bundle.val
    if dataset is None or len(dataset) == 0:
        raise CLIError(f"the dataset under {bundle.split.get('root')} has no {split} images")
    return dataset


def _cmd_eval(args: argparse.Namespace) -> int:
    from smelib.engine import evaluate, load_checkpoint
    from smelib.metrics import format_table

    try:
        model, meta = load_checkpoint(args.checkpoint, device=args.device)
        split = args.split or meta["config"]["eval"]["split"]
        dataset = _eval_dataset(meta, args.data_root, split, args.limit)
        metrics = evaluate(model, dataset, tta=args.tta, num_classes=meta["num_classes"],
                           ignore_index=meta["config"]["data"]["ignore_index"], size=meta["config"]["data"]["size"],
                           batch_size=meta["config"]["data"]["eval_batch_size"], progress=sys.stderr.isatty())
    except (*_engine_errors(), ValueError) as err:
        raise CLIError(str(err)) from None
    if args.json:
        out = metrics.to_dict()
        out.update({"split": split, "images": len(dataset), "tta": bool(args.tta), "checkpoint": args.checkpoint})
        print(json.dumps(out, indent=2))
    else:
        print(f"{args.checkpoint}: {split} split, {len(dataset)} images, tta={'on' if args.tta else 'off'}")
        print(format_table(metrics, meta.get("class_names")))
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="metrics of a checkpoint at the images' original resolution")
    p.add_argument("--checkpoint", required=True, help="a .pt written by `smelib train`")
    p.add_argument("--data-root", help="dataset folder (default: the one the checkpoint was trained on)")
    p.add_argument("--split", choices=["test", "val"], help="which subset (default: the config's eval.split)")
    p.add_argument("--tta", action="store_true", help="average softmax over the 8 flips x rot90 transforms")
    p.add_argument("--limit", type=int, help="only the first N images (smoke tests)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=_cmd_eval)


_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def _cmd_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from smelib.engine import load_checkpoint, predict
    from smelib.loading import read_image
    from smelib.viz import overlay

    files: list[Path] = []
    for item in args.images:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise CLIError(f"{item!r} is neither an image file nor a directory")
    if not files:
        raise CLIError("no images found in " + ", ".join(args.images))
    stems = [p.stem for p in files]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise CLIError(f"several inputs share the name stem(s) {dupes[:5]}; their outputs would collide")
    out = Path(args.out)
    targets = [out / f"{s}{suffix}" for s in stems for suffix in (".png", "_overlay.png")]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not args.force:
        raise CLIError(f"{len(existing)} output file(s) already exist (e.g. {existing[0]}); add --force to overwrite")
    try:
        model, meta = load_checkpoint(args.checkpoint, device=args.device)
        images = [read_image(p) for p in files]  # every file checked before anything is written
    except (*_engine_errors(), ValueError) as err:
        raise CLIError(str(err)) from None
    out.mkdir(parents=True, exist_ok=True)
    for path, image in zip(files, images):
        mask = predict(model, [image], tta=args.tta, size=meta["config"]["data"]["size"])[0]
        Image.fromarray(mask, mode="L").save(out / f"{path.stem}.png")
        rgb = np.asarray(image.convert("RGB"))
        Image.fromarray(overlay(rgb, mask)).save(out / f"{path.stem}_overlay.png")
    print(f"wrote {2 * len(files)} files for {len(files)} image(s) to {out}")
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="index masks (<stem>.png) and colour overlays (<stem>_overlay.png)")
    p.add_argument("images", nargs="+", metavar="IMAGES_OR_DIR", help="image files or folders of images")
    p.add_argument("--checkpoint", required=True, help="a .pt written by `smelib train`")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tta", action="store_true", help="average softmax over the 8 flips x rot90 transforms")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.set_defaults(func=_cmd_predict)


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from pathlib import Path

    from smelib.settings import quick_mode, repo_root, sample_root

    quick = args.quick or quick_mode()
    if args.config is None:
        args.config = str(repo_root() / "configs" / ("quick.yaml" if quick else "cpu_budget.yaml"))
    if quick and args.data_root is None:
        args.data_root = str(sample_root())
    args.resume = False
    runs = Path(args.out) if args.out else repo_root() / "results" / "runs"
    from smelib.reproduce import reproduce

    try:
        cfg = _train_config(args)
        report = reproduce(cfg, runs_dir=runs, quiet=args.quiet)
    except _engine_errors() as err:
        raise CLIError(str(err)) from None
    print(report)
    return 0


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="train -> eval -> tables and figures (--quick: the bundled sample, minutes)")
    p.add_argument("--quick", action="store_true", help="configs/quick.yaml on the bundled sample (also SMELIB_QUICK=1)")
    _add_train_flags(p)
    p.add_argument("--out", help="folder for the run directory, summary.csv and figures (default results/runs)")
    p.set_defaults(func=_cmd_reproduce)


def _cmd_results(args: argparse.Namespace) -> int:
    from pathlib import Path

    from smelib.results import format_summary, load_records, summarize, write_csv

    runs = Path(args.runs)
    if not runs.is_dir():
        raise CLIError(f"no runs folder {str(runs)!r}")
    rows = summarize(load_records(runs))
    if args.csv:
        write_csv(rows, args.csv)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_summary(rows) if rows else f"no completed runs under {runs}")
    return 0


def _add_results(sub: argparse._SubParsersAction) -> None:
    from smelib.settings import repo_root

    p = sub.add_parser("results", help="one row per (config, model, split) over the run records, mean and std over seeds")
    p.add_argument("--runs", default=str(repo_root() / "results" / "runs"), help="folder of run directories")
    p.add_argument("--csv", help="also write the table as CSV (e.g. results/summary.csv)")
    p.add_argument("--json", action="store_true", help="print JSON rows")
    p.set_defaults(func=_cmd_results)


# Every subcommand, in the order `smelib --help` lists them.
_SUBCOMMANDS = [_add_info, _add_models, _add_flops, _add_train, _add_eval, _add_predict, _add_reproduce,
               _add_results]


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
