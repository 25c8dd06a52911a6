"""The product commands of ``smelib``: the library's capabilities (train, evaluate, predict, count, benchmark,
export, release, data tools).

Each command has an ``_add_<name>(subparsers)`` function that declares its arguments and sets ``func`` to the
function that runs it; :mod:`smelib.cli` assembles them with the study's commands and dispatches. Library work
happens in the modules the commands call, so everything the CLI does is also reachable from Python.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class CLIError(Exception):
    """An error the user can fix (bad path, bad option); printed as one line, exit status 2."""


def _cmd_info(args: argparse.Namespace) -> int:
    import platform

    import torch

    from smelib import __version__
    from smelib.checkpoint import manifest
    from smelib.models import backbone_names, names
    from smelib.settings import data_root, quick_mode

    info = {
        "smelib": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda_available": torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
        "quick_mode": quick_mode(),
        "data_root": str(data_root()),
        "models": len(names()),
        "backbones": ", ".join(backbone_names()),
        "releases": ", ".join(sorted(manifest())) or "none",
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:15s} {value}")
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="versions, device, quick mode, the dataset root in use, backbones and releases")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=_cmd_info)


def _released() -> list[str]:
    """One line per released checkpoint: name, model, test mIoU as its manifest states it."""
    from smelib.checkpoint import manifest

    lines = []
    for name, entry in sorted(manifest().items()):
        miou = (entry.get("metrics") or {}).get("test_miou")
        lines.append(f"{name}  ({entry.get('model_name')}, {entry.get('bytes', 0) / 2**20:.1f} MiB"
                     + (f", test mIoU {100 * miou:.2f} % on its run's split" if miou is not None else "") + ")")
    return lines


def _cmd_models(args: argparse.Namespace) -> int:
    from smelib.models import backbone_names, names

    if args.names_only:
        print("\n".join(names()))
        return 0
    print("models (smelib train --model NAME, smelib.models.build(NAME)):")
    print("\n".join(f"  {n}" for n in names()))
    print("backbones (model.overrides.backbone=NAME):")
    print("\n".join(f"  {n}" for n in backbone_names()))
    print("released checkpoints (--checkpoint NAME in eval and predict):")
    print("\n".join(f"  {line}" for line in _released()) or "  none")
    return 0


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="the registered models and backbones, and the released checkpoints")
    p.add_argument("--names-only", action="store_true", help="only the model names, one per line")
    p.set_defaults(func=_cmd_models)


def _cmd_flops(args: argparse.Namespace) -> int:
    from smelib.tools import flops
    from smelib.models import names

    if args.table2:
        table2 = getattr(args, "table2_func", None)
        if table2 is None:
            raise CLIError("--table2 needs the study commands (smelib.study.commands); run the `smelib` script")
        return table2(args)
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
        print(format_rows(["module", "fvcore GMACs", "thop GMACs"], rows))
    return 0


def format_rows(head: list[str], rows: list[list[object]]) -> str:
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
# train, eval, predict, reproduce, results (the engine: smelib.training, smelib.study.results)
# ---------------------------------------------------------------------------------------------------------------


def user_errors() -> tuple[type[Exception], ...]:
    """The library errors a user can fix, to be reported as one line (CLIError) by the training commands."""
    from smelib.checkpoint import CheckpointError
    from smelib.config import ConfigError
    from smelib.data import DatasetError
    from smelib.records import RunDirError

    return (ConfigError, CheckpointError, DatasetError, RunDirError, FileNotFoundError, NotADirectoryError)


def train_config(args: argparse.Namespace) -> dict:
    """The resolved config of ``smelib train``/``reproduce``: the file, the flags, then ``key=value`` overrides."""
    from smelib.config import load_config

    flags = [("model.name", args.model), ("data.root", args.data_root), ("data.num_classes", args.num_classes),
             ("train.epochs", args.epochs), ("train.max_steps", args.max_steps), ("train.seed", args.seed),
             ("data.split", args.split)]
    overrides = [(key, value) for key, value in flags if value is not None] + list(args.overrides)
    if args.config is None:
        raise CLIError("give --config FILE (e.g. configs/quick.yaml)")
    return load_config(args.config, overrides)


def _cmd_train(args: argparse.Namespace) -> int:
    from smelib.training import TrainingDiverged, train

    flags = (args.model, args.data_root, args.num_classes, args.epochs, args.max_steps, args.seed, args.split)
    if args.resume and args.config is None and (args.overrides or any(v is not None for v in flags)):
        raise CLIError("--resume without --config continues with the run's own config: give no flags or overrides "
                       "(or give the same --config, flags and overrides as the run)")
    try:
        cfg = None if args.resume and args.config is None else train_config(args)
        result = train(cfg, out=args.out, runs_dir=args.runs, resume=args.resume, quiet=args.quiet,
                       allow_thread_change=args.allow_thread_change)
    except user_errors() as err:
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


def add_train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="a YAML config (configs/quick.yaml, configs/cpu_budget.yaml, configs/paper.yaml)")
    p.add_argument("--model", help="model name (model.name)")
    p.add_argument("--data-root", help="dataset folder, NEU-Seg or VOC layout (data.root)")
    p.add_argument("--num-classes", type=int, help="classes including background (data.num_classes)")
    p.add_argument("--epochs", type=int, help="train.epochs")
    p.add_argument("--max-steps", type=int, help="stop after N optimiser steps (train.max_steps)")
    p.add_argument("--seed", type=int, help="train.seed")
    p.add_argument("--split", choices=["official", "grouped", "leaky"], help="data.split")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=3e-3")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a config; writes checkpoints, log.csv and record.json")
    add_train_flags(p)
    p.add_argument("--out", help="the run directory (new, or the one to --resume); default results/runs/<run_id>")
    p.add_argument("--runs", help="parent folder of new run directories (default results/runs)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint "
                   "(bit-identical on CPU when resumed with the same thread count; a change is refused)")
    p.add_argument("--allow-thread-change", action="store_true",
                   help="with --resume: continue with another thread count, accepting a not bit-identical result")
    p.set_defaults(func=_cmd_train)


def _eval_bundle(meta: dict, data_root: str | None, limit: int | None):
    """The checkpoint's datasets (its config's split and validation carve-out), optionally re-rooted."""
    from smelib.data.loading import checkpoint_data

    return checkpoint_data(meta, data_root, limit)


def _eval_dataset(meta: dict, data_root: str | None, split: str, limit: int | None, bundle=None):
    """The checkpoint's dataset subset (its config's split and validation carve-out), optionally re-rooted."""
    bundle = bundle if bundle is not None else _eval_bundle(meta, data_root, limit)
    dataset = bundle.test if split == "test" else bundle.val
    if dataset is None or len(dataset) == 0:
        raise CLIError(f"the dataset under {bundle.split.get('root')} has no {split} images")
    return dataset


def _check_classes(meta: dict, bundle: Any, checkpoint: str) -> None:
    """Refuse a checkpoint whose class count differs from the dataset's: its metrics would be meaningless."""
    if int(meta["num_classes"]) != int(bundle.num_classes):
        raise CLIError(f"checkpoint {checkpoint} predicts {meta['num_classes']} classes "
                       f"({', '.join(meta.get('class_names') or [])}) but the dataset under "
                       f"{bundle.split.get('root')} has {bundle.num_classes} ({', '.join(bundle.class_names)})")


def device_arg(text: str) -> str:
    """``--device``: cpu, cuda or cuda:N, checked against this torch build before any work starts."""
    import torch

    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text!r}: use cpu, cuda or cuda:N")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available here (torch {torch.__version__})")
        if ":" in text and int(text.split(":")[1]) >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from smelib.checkpoint import resolve_checkpoint
    from smelib.mechanisms import rule_for_checkpoint
    from smelib.runtime import precision_name
    from smelib.metrics import format_table
    from smelib.checkpoint import load_checkpoint
    from smelib.inference import evaluate

    record_path = None
    if args.record:
        record_path = Path(args.record)
        if record_path.exists():
            raise CLIError(f"evaluation record {str(record_path)!r} exists; choose another name (records are never "
                           "overwritten)")
        if record_path.suffix != ".json":
            raise CLIError(f"evaluation record {str(record_path)!r}: the name must end in .json")
        from smelib.records import git_info

        git_at_start = git_info()  # the code that evaluates, even if the tree changes while it runs
    started = time.time()
    try:
        # a release name resolves to its verified file: the record hashes that file
        checkpoint_file = resolve_checkpoint(args.checkpoint)
        model, meta = load_checkpoint(checkpoint_file, device=args.device, verify=not args.no_verify)
        autocast = _eval_autocast(args.bf16, torch.device(args.device))
        split = args.split or meta["config"]["eval"]["split"]
        bundle = _eval_bundle(meta, args.data_root, args.limit)
        _check_classes(meta, bundle, args.checkpoint)
        dataset = _eval_dataset(meta, args.data_root, split, args.limit, bundle)
        # --threshold/--tau0 override the checkpoint config's eval.decision/eval.threshold (default: argmax); a
        # checkpoint without train_stats has them counted on its whole training subset (not cut by --limit)
        rule = rule_for_checkpoint(meta, mode=args.threshold, tau0=args.tau0, train_dataset=lambda: (
            bundle if args.limit is None else _eval_bundle(meta, args.data_root, None)).train)
        metrics = evaluate(model, dataset, tta=args.tta, num_classes=meta["num_classes"],
                           ignore_index=meta["config"]["data"]["ignore_index"], size=meta["config"]["data"]["size"],
                           batch_size=meta["config"]["data"]["eval_batch_size"], progress=sys.stderr.isatty(),
                           decision=rule, amp_dtype=autocast)
    except (*user_errors(), ValueError) as err:
        raise CLIError(str(err)) from None
    if record_path is not None:
        from smelib.records import write_eval_record

        write_eval_record(record_path, metrics, meta, checkpoint=checkpoint_file, subset=split, images=len(dataset),
                          tta=bool(args.tta), decision=rule.to_dict(),
                          autocast=precision_name(autocast) if autocast else None,
                          limit=args.limit, device=args.device, wall_seconds=time.time() - started,
                          git=git_at_start, weights_label=args.weights_label)
        print(f"wrote {record_path}", file=sys.stderr)
    if args.json:
        out = metrics.to_dict()
        out.update({"split": split, "images": len(dataset), "tta": bool(args.tta), "checkpoint": args.checkpoint,
                    "decision": rule.to_dict(), "autocast": precision_name(autocast) if autocast else None})
        print(json.dumps(out, indent=2))
    else:
        how = rule.mode + (f" (tau0={rule.tau0:g})" if rule.mode != "argmax" else "")
        print(f"{args.checkpoint}: {split} split, {len(dataset)} images, tta={'on' if args.tta else 'off'}, "
              f"decision={how}" + (f", {precision_name(autocast)} autocast" if autocast else ""))
        print(format_table(metrics, meta.get("class_names")))
    return 0


def _add_threshold_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", choices=["argmax", "static", "dynamic"],
                   help="how pixels are labelled (smelib.mechanisms): argmax, or defect where 1 - p(background) > "
                        "tau, tau fixed (static) or adapted to the predicted defect sizes (dynamic); default: the "
                        "checkpoint config's eval.decision (argmax unless the run set it)")
    p.add_argument("--tau0", type=float, help="the static threshold / the dynamic rule's base "
                                              "(default: eval.threshold.tau0, 0.5)")


def _eval_autocast(bf16: bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``eval --bf16`` on ``device``: bf16, or fp16 on a GPU without native bf16 (capability
    below 8.0, where bf16 is emulated); None without ``--bf16``."""
    import torch

    from smelib.runtime import choose_precision

    if not bf16:
        return None
    dtype, why = choose_precision("bf16", device)
    if dtype != torch.bfloat16:
        print(f"--bf16: {why}", file=sys.stderr)
    return dtype


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="metrics of a checkpoint at the images' original resolution")
    p.add_argument("--checkpoint", required=True,
                   help="a .pt written by `smelib train`, or a released checkpoint's name (see `smelib models`)")
    p.add_argument("--data-root", help="dataset folder (default: the one the checkpoint was trained on)")
    p.add_argument("--split", choices=["test", "val"], help="which subset (default: the config's eval.split)")
    p.add_argument("--tta", action="store_true", help="average softmax over the 8 flips x rot90 transforms")
    p.add_argument("--limit", type=_positive_int, help="only the first N images (smoke tests; N >= 1)")
    p.add_argument("--device", default="cpu", type=device_arg, help="cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the checkpoint's integrity check (says so; only for a file you trust)")
    p.add_argument("--bf16", action="store_true",
                   help="run the model under bf16 autocast (CPU or CUDA): the accuracy of `bench --cpu-bf16`")
    p.add_argument("--record", metavar="FILE.json",
                   help="also write an evaluation record (checkpoint hash, source run, subset, TTA, decision rule, "
                        "git commit, host, wall time, metrics) to this new file, e.g. results/headroom/<name>.json")
    p.add_argument("--weights-label", help="with --record: what the weights are, in words (default: the run that "
                   "trained them and its epoch); the record names them by this label and their SHA256")
    _add_threshold_flags(p)
    p.set_defaults(func=_cmd_eval)


_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def _predict_inputs(items: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise CLIError(f"{item!r} is neither an image file nor a directory")
    if not files:
        raise CLIError("no images found in " + ", ".join(items))
    return files


def _predict_targets(files: list[Path], out: Path, palette: bool, force: bool) -> list[tuple[Path, Path]]:
    """``(mask, overlay)`` paths per input; refuses outputs that share a name or would replace an input."""
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {str(out)!r} is a file; give a folder (it is created if missing)")
    mask_suffix = "_mask.png" if palette else ".png"
    targets = [(out / f"{p.stem}{mask_suffix}", out / f"{p.stem}_overlay.png") for p in files]
    writers: dict[Path, Path] = {}
    for src, pair in zip(files, targets):
        for t in pair:
            if t.resolve() in writers:
                raise CLIError(f"{writers[t.resolve()].name} and {src.name} would both write {t.name}; rename one, "
                               "or predict them into separate folders")
            writers[t.resolve()] = src
    inputs = {p.resolve() for p in files}
    clobbered = [str(t) for pair in targets for t in pair if t.resolve() in inputs]
    if clobbered:
        raise CLIError(f"{clobbered[0]} is an input image and an output name: choose another --out folder")
    existing = [str(t) for pair in targets for t in pair if t.exists()]
    if existing and not force:
        raise CLIError(f"{len(existing)} output file(s) already exist (e.g. {existing[0]}); add --force to overwrite")
    return targets


def _cmd_predict(args: argparse.Namespace) -> int:
    from PIL import Image
    from tqdm.auto import tqdm

    from smelib.data import read_image
    from smelib.mechanisms import rule_for_checkpoint
    from smelib.palette import overlay, palette_image, write_legend
    from smelib.checkpoint import load_checkpoint
    from smelib.inference import predict

    files = _predict_inputs(args.images)
    out = Path(args.out)
    targets = _predict_targets(files, out, args.palette, args.force)
    try:
        model, meta = load_checkpoint(args.checkpoint, device=args.device, verify=not args.no_verify)
        # Every file is read before anything is written: one unreadable image stops the command cleanly.
        images = [read_image(p, meta["in_channels"]) for p in files]
        rule = rule_for_checkpoint(meta, mode=args.threshold, tau0=args.tau0,
                                   train_dataset=lambda: _eval_bundle(meta, None, None).train)
    except (*user_errors(), ValueError) as err:
        raise CLIError(str(err)) from None
    out.mkdir(parents=True, exist_ok=True)
    names = list(meta.get("class_names") or [])
    for image, (mask_path, overlay_path) in tqdm(list(zip(images, targets)), desc="predict", unit="img",
                                                  disable=not sys.stderr.isatty() or len(files) < 2):
        mask = predict(model, [image], tta=args.tta, size=meta["config"]["data"]["size"],
                       normalization=meta.get("normalization"), decision=rule)[0]
        (palette_image(mask) if args.palette else Image.fromarray(mask)).save(mask_path)
        rgb = image.expand(3, -1, -1).permute(1, 2, 0).numpy()
        Image.fromarray(overlay(rgb, mask)).save(overlay_path)
    legend = write_legend(out / "legend.png", names)
    print(f"wrote {2 * len(files)} files for {len(files)} image(s) to {out}, and the colour key {legend.name}")
    kind = "palette PNGs (viewers show the class colours)" if args.palette else \
        "8-bit PNGs of class indices 0-%d (they look black in a viewer; --palette colours them)" % (len(names) - 1)
    print(f"masks: {kind}; overlays: " + ", ".join(f"{n} = {c}" for n, c in _colour_words(names)))
    return 0


def _colour_words(names: Sequence[str]) -> list[tuple[str, str]]:
    from smelib.palette import class_color_name

    return [(n, class_color_name(i)) for i, n in enumerate(names) if i > 0]


def _add_predict(sub: argparse._SubParsersAction) -> None:
    from smelib.checkpoint import manifest

    released = ", ".join(sorted(manifest())) or "none"
    p = sub.add_parser("predict", help="index masks (<stem>.png) and colour overlays (<stem>_overlay.png)",
                       description="Segment images with a trained checkpoint: writes <stem>.png class-index masks, "
                                   "<stem>_overlay.png colour overlays and legend.png (the colour key).")
    p.add_argument("images", nargs="+", metavar="IMAGES_OR_DIR", help="image files or folders of images")
    p.add_argument("--checkpoint", required=True,
                   help=f"a .pt written by `smelib train`, or a released checkpoint's name ({released}; "
                        "its SHA-256 is verified)")
    p.add_argument("--out", required=True, help="output folder (created if missing; never an input's folder "
                                                 "when that would replace an input)")
    p.add_argument("--tta", action="store_true", help="average softmax over the 8 flips x rot90 transforms")
    p.add_argument("--palette", action="store_true",
                   help="write masks as palette PNGs (<stem>_mask.png) that viewers show in the class colours")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs (never an input)")
    p.add_argument("--device", default="cpu", type=device_arg, help="cpu, cuda, cuda:N")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the checkpoint's integrity check (says so; only for a file you trust)")
    _add_threshold_flags(p)
    p.set_defaults(func=_cmd_predict)


def _data_error(err: Exception) -> CLIError:
    return CLIError(str(err))


def _provenance(command: str, seconds: float, files: Sequence[str]) -> dict:
    """Git commit of the checkout, whether ``files`` differ from it, the command and its wall time."""
    import subprocess

    from smelib.settings import repo_root

    def git(*a: str) -> str:
        try:
            res = subprocess.run(["git", "-C", str(repo_root()), *a], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return ""
        return res.stdout.strip() if res.returncode == 0 else ""

    return {
        "git_commit": git("rev-parse", "HEAD") or None,
        "source_files_modified": bool(git("status", "--porcelain", "--", *files)),
        "command": command,
        "wall_seconds": round(seconds, 2),
    }


def _cmd_data_convert(args: argparse.Namespace) -> int:
    from smelib.data import DatasetError
    from smelib.data.convert import convert_to_voc

    if args.to != "voc":
        raise CLIError(f"--to {args.to}: only 'voc' is supported")
    try:
        voc = convert_to_voc(args.root, args.out, seed=args.seed, val_fraction=args.val_fraction)
    except DatasetError as err:
        raise _data_error(err) from None
    print(f"wrote {voc}")
    return 0


def _print_check(report: dict) -> None:
    print(f"{report['root']}: {report['layout']} layout, {report['num_images']} images "
          + ", ".join(f"{k} {v}" for k, v in report["splits"].items()))
    inferred = " (inferred from the masks)" if report["num_classes_inferred"] else ""
    print(f"classes: {report['num_classes']}{inferred}: {', '.join(report['class_names'])}")
    print("image sizes: " + ", ".join(f"{k} x{v}" for k, v in list(report["image_sizes"].items())[:8]))
    print(f"pixels: mean {report['pixel_mean']:.4f}, std {report['pixel_std']:.4f} (x / 255); "
          f"ignore (255): {report['ignore_pixels']}")
    print(f"{'class':16s} {'pixel frac':>10s} {'images':>7s} {'defect px/image: q1':>20s} {'median':>8s} {'q3':>8s}")
    for name, frac in report["class_pixel_fraction"].items():
        st = report["defect_pixels_per_image"].get(name, {})
        q = (f"{st['q1']:20.0f} {st['median']:8.0f} {st['q3']:8.0f}" if st.get("n_images") else
             f"{'-':>20s} {'-':>8s} {'-':>8s}")
        print(f"{name:16s} {frac:10.5f} {report['images_containing'][name]:7d} {q}")
    if "audit" in report:
        a = report["audit"]
        cg, gw, lk = a["copy_groups"], a["groups_with_overlaps"], a["official_test_leakage"]
        md = a["mask_disagreement_between_copies"]
        print(f"copy groups: {cg['count']} (sizes {cg['size_histogram']}); with overlaps: {gw['count']} "
              f"(sizes {gw['size_histogram']})")
        print(f"official test images with a copy in training: {lk['with_a_copy_in_training']} of "
              f"{lk['test_images']}; with a copy or overlap: {lk['with_a_copy_or_overlap_in_training']}")
        if md["pairs"]:
            med = md["pixel_fraction_disagreeing_among_disagreeing_pairs"].get("median", 0.0)
            print(f"masks of copies: {md['fraction_of_pairs_disagreeing']:.1%} of {md['pairs']} pairs disagree; "
                  f"median disagreeing pixel fraction among those {med:.2%}")
        print(f"grouped split: groups crossing sides: {a['splits']['grouped_groups_crossing_sides']}")


def _cmd_data_check(args: argparse.Namespace) -> int:
    import time

    from smelib.data import DatasetError, check_dataset, open_dataset

    start = time.perf_counter()
    try:
        # --num-classes is what the masks are checked against, even where it contradicts the class names.
        info = open_dataset(args.root)
        report = check_dataset(info, args.num_classes, progress=not args.json and sys.stderr.isatty())
        if args.audit:
            from smelib.data.splits import Groups, audit, find_groups

            groups: Groups = find_groups(info)
            report["audit"] = audit(info, groups, seed=args.seed)
    except DatasetError as err:
        raise _data_error(err) from None
    if args.out:
        from pathlib import Path

        command = f"smelib data check {args.root}" + (" --audit" if args.audit else "") + f" --out {args.out}"
        report["provenance"] = _provenance(command, time.perf_counter() - start,
                                           ["smelib/data.py", "smelib/data/splits.py"])
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        _print_check(report)
        print("ok: every image has a readable mask of the same size with valid values")
    return 0


def _cmd_data_groups(args: argparse.Namespace) -> int:
    from collections import Counter

    from smelib.data import DatasetError, open_dataset
    from smelib.data.splits import find_groups, save_groups

    try:
        info = open_dataset(args.root)
        groups = find_groups(info, copy_threshold=args.copy_threshold, overlap_threshold=args.overlap_threshold,
                             overlaps=not args.no_overlaps, progress=sys.stderr.isatty())
    except DatasetError as err:
        raise _data_error(err) from None
    save_groups(groups, args.json)
    sizes = dict(sorted(Counter(len(g) for g in groups.groups).items()))
    print(f"{len(groups.groups)} groups of {len(groups.ids)} images (sizes {sizes}); "
          f"{len(groups.copy_groups)} copy groups; wrote {args.json}")
    return 0


def _cmd_data_split(args: argparse.Namespace) -> int:
    from pathlib import Path

    from smelib.data import DatasetError, open_dataset
    from smelib.data.splits import load_groups, make_split, split_summary

    try:
        info = open_dataset(args.root)
        groups = load_groups(args.groups) if args.groups else None
        copies = load_groups(args.groups, key="copy_groups") if args.groups and args.kind == "leaky" else None
        split = make_split(info, args.kind, seed=args.seed, val_fraction=args.val_fraction, groups=groups,
                           copy_groups=copies)
    except DatasetError as err:
        raise _data_error(err) from None
    summary = split_summary(info, split)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"kind": args.kind, "seed": args.seed, **split}, indent=1) + "\n",
                                   encoding="utf-8")
    for side, s in summary.items():
        print(f"{side:5s} {s['images']:5d} images; containing {s['images_containing']}; multi-class {s['multi_class']}")
    return 0


def _cmd_data_download(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from smelib.data import DatasetError
    from smelib.data.download import DEFAULT_URL, download_neu_seg
    from smelib.settings import repo_root

    dest = args.dest or os.environ.get("SMELIB_DATA") or str(repo_root().parent / "shared" / "data" / "NEU_Seg")
    try:
        out = download_neu_seg(dest, url=args.url or DEFAULT_URL, sha_list=args.sha_list,
                               progress=sys.stderr.isatty())
    except DatasetError as err:
        raise _data_error(err) from None
    n = sum(1 for _ in Path(out).rglob("*") if _.is_file())
    print(f"verified and unpacked {n} files into {out}")
    return 0


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="NEU-Seg/VOC datasets: download, check, convert, duplicate groups, splits")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True

    c = dsub.add_parser("convert", help="write a native NEU-Seg folder in the Pascal VOC layout (paper's 9:1 split)")
    c.add_argument("root", help="native NEU-Seg folder (images/, annotations/)")
    c.add_argument("--to", default="voc", choices=["voc"], help="target layout")
    c.add_argument("--out", required=True, help="destination folder (must not exist or be empty)")
    c.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    c.add_argument("--val-fraction", type=float, default=0.1, help="validation share of the training images")
    c.set_defaults(func=_cmd_data_convert)

    k = dsub.add_parser("check", help="validate every image/mask pair and print label statistics")
    k.add_argument("root", help="dataset folder (native NEU-Seg or VOC layout)")
    k.add_argument("--num-classes", type=int, default=None, help="classes incl. background (default: class names)")
    k.add_argument("--audit", action="store_true", help="also find duplicate groups and measure the leakage")
    k.add_argument("--seed", type=int, default=0, help="seed of the splits summarised by --audit")
    k.add_argument("--json", action="store_true", help="print the report as JSON")
    k.add_argument("--out", help="also write the JSON report, with git commit, command and wall time, to this file")
    k.set_defaults(func=_cmd_data_check)

    g = dsub.add_parser("groups", help="find images that are rotated/flipped copies (or share half their content)")
    g.add_argument("root", help="dataset folder")
    g.add_argument("--json", required=True, metavar="OUT", help="write {'groups': [[id, ...], ...], ...} here")
    g.add_argument("--copy-threshold", type=float, default=0.97, help="similarity for whole-image copies")
    g.add_argument("--overlap-threshold", type=float, default=0.98, help="similarity for half-image overlaps")
    g.add_argument("--no-overlaps", action="store_true", help="group whole-image copies only")
    g.set_defaults(func=_cmd_data_groups)

    s = dsub.add_parser("split", help="print (and save) an official or grouped train/val/test split")
    s.add_argument("root", help="dataset folder")
    s.add_argument("--kind", choices=["official", "grouped", "leaky"], default="official")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--val-fraction", type=float, default=0.1)
    s.add_argument("--groups", help="groups JSON from `smelib data groups` (grouped, leaky; default: detect now)")
    s.add_argument("--json", metavar="OUT", help="write {'train': [...], 'val': [...], 'test': [...]} here")
    s.set_defaults(func=_cmd_data_split)

    d = dsub.add_parser("download", help="download NEU-Seg, verify every file's SHA-256, unpack")
    d.add_argument("--dest",
                   help="target folder (default: $SMELIB_DATA, else ../shared/data/NEU_Seg beside the checkout)")
    d.add_argument("--url", help="archive URL (default: the GitHub archive of DHW-Master/NEU_Seg at the pinned commit)")
    d.add_argument("--sha-list", help="sha256sum-format list to verify against (default: the packaged one)")
    d.set_defaults(func=_cmd_data_download)


# ---------------------------------------------------------------------------------------------------------------
# bench, export (smelib.tools.bench, smelib.tools.optimize_inference, smelib.tools.export)
# ---------------------------------------------------------------------------------------------------------------


def _split_names(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def _cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from smelib.tools import bench
    from smelib.config import parse_value
    from smelib.models import names
    from smelib.tools.optimize_inference import OptimizeOptions

    if args.model not in names():
        raise CLIError(f"unknown model {args.model!r}; see `smelib models`")
    size = tuple(args.size) if len(args.size) == 2 else (args.size[0], args.size[0])
    if len(args.size) > 2 or min(size) < 8:
        raise CLIError("--size takes one or two integers >= 8 (H [W])")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise CLIError(f"--device {args.device}: CUDA is not available in this torch build / machine")
    try:
        amp = "bf16" if args.cpu_bf16 else (None if args.amp == "none" else args.amp)
        options = OptimizeOptions.from_names(_split_names(args.only), _split_names(args.disable),
                                             amp=amp, cpu_amp=args.cpu_bf16, threads=None)
    except ValueError as err:
        raise CLIError(str(err)) from None
    model_kwargs = {}
    for item in args.model_arg:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise CLIError(f"--model-arg {item!r} is not of the form KEY=VALUE (e.g. decoder_width=64)")
        model_kwargs[key.strip()] = parse_value(text)
    if args.profile:
        try:
            prof = bench.profile_ops(args.model, size, args.batch, optimised=not args.profile_eager,
                                     options=OptimizeOptions(**{**options.to_dict(), "compile": False}),
                                     threads=args.threads, train=args.train, model_kwargs=model_kwargs)
        except TypeError as err:
            raise CLIError(f"--model-arg: {err}") from None
        stem = Path(args.profile)
        jpath, cpath = bench.write_profile(prof, stem)
        if args.json:
            print(json.dumps(prof, indent=2))
        else:
            rows = [[r["class"], r["self_cpu_ms"] / prof["steps"], 100 * r["share"]] for r in prof["by_class"]]
            print(f"{args.model} {prof['mode']} inference, batch {args.batch}, {size[0]}x{size[1]}: "
                  f"{prof['ms_per_batch_wall']:.1f} ms per batch (profiled)")
            print(format_rows(["operator class", "self CPU ms/batch", "% of self CPU"], rows))
            print()
            rows = [[r["op"], r["self_cpu_ms"] / prof["steps"], 100 * r["share"], r["calls"]]
                    for r in prof["top_ops"][:15]]
            print(format_rows(["op", "self CPU ms/batch", "%", "calls"], rows))
            print(f"\ndepthwise convolutions: {100 * prof['depthwise_share']:.1f} % of self CPU time "
                  f"(7x7 in the star blocks: {100 * prof['depthwise_7x7_share']:.1f} %)")
            print(f"wrote {jpath} and {cpath}")
        return 0
    if args.opt_threads in ("auto", "same"):
        opt_threads = None if args.opt_threads == "same" else "auto"
    elif args.opt_threads.isdigit() and int(args.opt_threads) >= 1:
        opt_threads = int(args.opt_threads)
    else:
        raise CLIError(f"--opt-threads takes a positive integer, auto or same, not {args.opt_threads!r}")
    try:
        result = bench.benchmark(args.model, size, args.batch, train=args.train, iters=args.iters,
                                 warmup=args.warmup, threads=args.threads, device=args.device, options=options,
                                 opt_threads=opt_threads, model_kwargs=model_kwargs)
    except TypeError as err:
        raise CLIError(f"--model-arg: {err}") from None
    except (RuntimeError, ValueError) as err:
        raise CLIError(str(err)) from None
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(bench.format_result(result))
        if args.out:
            print(f"wrote {args.out}")
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    # Kept in step with smelib.tools.optimize_inference.OPTIMISATIONS (not imported here: building the parser stays
    # torch-free).
    optimisations = ("fold_bn, fuse_msaa, fuse_star, channels_last, inference_mode, compile, reuse_memory, amp, "
                     "cudnn_benchmark, pinned_memory, fused_optimizer")
    p = sub.add_parser("bench", help="images/s and %% of the peak (best of matmul and convolution kernels, raised "
                       "to any faster mode: never above 100 %%), eager vs optimised, interleaved")
    p.add_argument("model", help="a registered model name (see `smelib models`)")
    p.add_argument("--size", nargs="+", type=int, default=[200, 200], metavar="H",
                   help="input size: H or H W (default 200 200, NEU-Seg's)")
    p.add_argument("--batch", type=int, default=16, help="images per batch / training step (default 16)")
    p.add_argument("--train", action="store_true",
                   help="time a training step (forward, cross-entropy, backward, SGD); work counted as 3x forward MACs")
    p.add_argument("--iters", type=int, default=10, help="timed repetitions per mode, interleaved (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed repetitions per mode (default 2)")
    p.add_argument("--threads", type=int, help="threads of the eager mode and the peak (default: one per core)")
    p.add_argument("--opt-threads", default="auto", metavar="N|auto|same",
                   help="threads of the optimised mode: N, auto (fastest of 1..cores, probed in the run; default) "
                        "or same (as --threads)")
    p.add_argument("--device", default="cpu", type=device_arg, help="cpu, cuda, cuda:N")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword of the model's factory, repeatable (e.g. decoder_width=64 context_width=64: "
                        "the CPU-budget protocol's widths)")
    p.add_argument("--amp", choices=["bf16", "fp16", "none"], default="bf16",
                   help="autocast dtype of the optimised mode on CUDA (ignored on CPU unless --cpu-bf16; default bf16)")
    p.add_argument("--cpu-bf16", action="store_true",
                   help="optimised mode also autocasts to bf16 on the CPU (AMX/AVX-512-BF16), measured against a bf16 "
                        "peak; changes the numbers (check with `smelib eval --bf16`)")
    p.add_argument("--only", action="append", metavar="A,B",
                   help=f"optimised mode uses only these optimisations ({optimisations})")
    p.add_argument("--disable", action="append", metavar="A,B", help="optimised mode leaves these out")
    p.add_argument("--json", action="store_true",
                   help='print JSON: {"eager": {...}, "optimised": {...}, "speedup", "record"}')
    p.add_argument("--out", help="also write the JSON here (e.g. results/bench/sme_infer.json)")
    p.add_argument("--profile", metavar="STEM",
                   help="instead: torch.profiler table of inference (of a training step with --train), written to "
                        "STEM.json and STEM.csv")
    p.add_argument("--profile-eager", action="store_true", help="with --profile: profile the eager model")
    p.set_defaults(func=_cmd_bench)


def _cmd_export(args: argparse.Namespace) -> int:
    from smelib.tools.export import ExportError, export_onnx

    try:
        report = export_onnx(args.source, args.onnx, size=tuple(args.size), batch=args.batch, opset=args.opset,
                             dynamic=not args.static, atol=args.atol, rewrite=args.rewrite,
                             num_classes=args.num_classes)
    except ExportError as err:
        raise CLIError(str(err)) from None
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"wrote {report['out']} ({report['bytes'] / 1e6:.2f} MB, opset {report['opset']}, "
          f"{'dynamic batch/height/width' if report['dynamic_axes'] else 'static shape'})")
    print(f"source: {report['source'].get('kind')} {report['source'].get('model') or ''}".rstrip())
    print(f"onnx.checker: {report['onnx_checker']}")
    print(f"onnxruntime: {report['onnxruntime']}")
    for shape, diff in report.get("max_abs_diff", {}).items():
        print(f"  input {shape}: max abs diff {diff:.3g} (limit {report['atol']:g})")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="ONNX export, checked against PyTorch with onnxruntime when installed")
    p.add_argument("source", metavar="CHECKPOINT_OR_MODEL", help="a .pt from `smelib train`, or a model name")
    p.add_argument("--onnx", required=True, metavar="OUT", help="the .onnx file to write")
    p.add_argument("--size", nargs=2, type=int, default=[200, 200], metavar=("H", "W"),
                   help="example input size (default 200 200); height and width stay dynamic")
    p.add_argument("--batch", type=int, default=1, help="example batch (default 1; the batch axis stays dynamic)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, >= 17 (default 17)")
    p.add_argument("--static", action="store_true", help="fixed input shape instead of dynamic axes")
    p.add_argument("--atol", type=float, default=1e-3, help="largest allowed max abs diff (default 1e-3)")
    p.add_argument("--rewrite", action="store_true", help="export with BatchNorm folded and MSAA/star fusions")
    p.add_argument("--num-classes", type=int, default=4, help="classes of a model built by name (default 4)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_export)


def _cmd_release(args: argparse.Namespace) -> int:
    from smelib.checkpoint import CheckpointError
    from smelib.tools.release import make_release

    metrics = {}
    if args.record:
        record = json.loads(Path(args.record).read_text())
        test = (record.get("final") or {}).get("test") or {}
        metrics = {k: test[k] for k in ("miou", "precision", "mpa", "pixel_acc") if k in test}
        if "defects_only" in test:
            metrics["miou_defects_only"] = test["defects_only"].get("miou")
    try:
        entry = make_release(args.checkpoint, args.name, metrics=metrics)
    except CheckpointError as err:
        raise CLIError(str(err)) from None
    print(json.dumps({args.name: entry}, indent=2))
    return 0


def _add_release(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("release", help="ship a trained checkpoint inside the package (fp16, SHA256 in a manifest)")
    p.add_argument("checkpoint", help="a best.pt/last.pt written by `smelib train`")
    p.add_argument("--name", required=True, help="release name; then usable as --checkpoint NAME anywhere")
    p.add_argument("--record", help="the run's record.json, to copy its test metrics into the manifest")
    p.set_defaults(func=_cmd_release)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from smelib.tools.doctor import doctor

    try:
        report = doctor(gpu=args.gpu, steps=args.steps, config=args.config, data_root=args.data_root,
                        out_dir=args.out, say=lambda line: print(line, file=sys.stderr, flush=True))
    except user_errors() as err:
        raise CLIError(str(err)) from None
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    return 1 if report["status"] == "failed" else 0


def _add_doctor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="torch/CUDA, GPU, precision and why; --gpu: train, compare, torchrun, bench")
    p.add_argument("--gpu", action="store_true",
                   help="on a GPU: train configs/paper.yaml for --steps steps with AMP + channels_last and in fp32, "
                        "compare; torchrun on 2 GPUs; bench; write results/doctor/doctor_<stamp>.json")
    p.add_argument("--steps", type=int, default=30, help="optimiser steps of each training check (default 30)")
    p.add_argument("--config", help="training config of the checks (default configs/paper.yaml)")
    p.add_argument("--data-root", help="dataset folder (default: NEU-Seg if installed, else the bundled sample)")
    p.add_argument("--out", help="folder of the record (default results/doctor)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_doctor)


#: The product commands, in the order ``smelib --help`` lists them.
PRODUCT_COMMANDS = [_add_info, _add_models, _add_flops, _add_train, _add_eval, _add_predict, _add_data,
            _add_bench, _add_export, _add_release, _add_doctor]
