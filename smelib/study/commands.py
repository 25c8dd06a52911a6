"""The study commands of ``smelib``: what exists for this book's reproduction of the paper (the run table, the
paired comparisons, the decision records, the paper's Table 2 beside our counts).

Same shape as :mod:`smelib.tools.commands`: an ``_add_<name>(subparsers)`` per command.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from smelib.tools.commands import CLIError, add_train_flags, device_arg, train_config, user_errors


def _cmd_table2(args: argparse.Namespace) -> int:
    from smelib.study.table2 import table2, table2_display

    if not args.json:
        print("counting the 4 configurations of the paper's Table 2 at 1x3x512x512 (about a minute on 2 cores) ...",
              file=sys.stderr, flush=True)
    rows = table2()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(table2_display(rows))
    print("\nGFLOPs in the paper's convention = 2 x thop multiply-adds at 1x3x512x512; "
          "the paper's numbers are the paper's, the rest are ours.")
    print("Why two rows read 56.845 and 'StarNet + ASPP' maps to starnet_aspp_msaa: thop does not see ELA's "
          "operations, and the paper's\nfirst two labels match the counts of other configurations; the book's "
          "chapter 'Counting FLOPs' derives each row.")
    return 0


#: The shipped checkpoint that ``reproduce --quick`` fine-tunes and compares against.
RELEASE = "sme_deeplabv3plus_lite_neuseg"


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from pathlib import Path

    from smelib.settings import quick_mode, repo_root, sample_root

    quick = args.quick or quick_mode()
    if args.config is None:
        args.config = str(repo_root() / "configs" / ("quick.yaml" if quick else "cpu_budget.yaml"))
    if quick and args.data_root is None:
        args.data_root = str(sample_root())
    args.resume = False
    # quick runs are a demonstration, never results: they go to the git-ignored scratch/ folder
    runs = Path(args.out) if args.out else repo_root() / ("scratch" if quick else "results") / "runs"
    from smelib.study.reproduce import reproduce

    try:
        if quick:
            # A minute of training from scratch learns nothing visible; fine-tuning the shipped checkpoint on the
            # sample shows the whole pipeline on a model that segments (the report says which weights it started from).
            args.overrides = [f"model.init={RELEASE}", "optim.lr=2e-4", *args.overrides]
        cfg = train_config(args)
        report = reproduce(cfg, runs_dir=runs, quiet=args.quiet, reference=RELEASE if quick else None)
    except user_errors() as err:
        raise CLIError(str(err)) from None
    print(report)
    return 0


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="train -> eval -> tables and figures (--quick: the bundled sample, a minute)")
    p.add_argument("--quick", action="store_true",
                   help="configs/quick.yaml on the bundled sample, fine-tuning the shipped checkpoint for a minute, "
                        "into scratch/runs (also SMELIB_QUICK=1)")
    add_train_flags(p)
    p.add_argument("--out", help="folder for the run directory, summary.csv and figures (default results/runs; "
                                 "with --quick scratch/runs, which git ignores)")
    p.set_defaults(func=_cmd_reproduce)


def _cmd_results(args: argparse.Namespace) -> int:
    from pathlib import Path

    from smelib.study.results import format_summary, load_records, summarize, write_csv

    runs = Path(args.runs)
    if not runs.is_dir():
        raise CLIError(f"no runs folder {str(runs)!r}")
    try:
        records = load_records(runs)
    except ValueError as err:
        raise CLIError(str(err)) from err
    rows = summarize(records)
    if args.csv:
        write_csv(rows, args.csv)
    if args.missing:
        from smelib.study.plan import (abandoned_runs, missing_option_runs, missing_runs, protocol_epochs,
                                        resumable_runs, time_estimate)
        from smelib.records import host_info

        here = host_info()
        stopped, lost = resumable_runs(runs), abandoned_runs(runs)
        # commands on stdout (a queue file: `smelib results --missing > queue.txt`), the time guesses on stderr
        for m in [*missing_runs(rows), *missing_option_runs(rows)]:
            part = next((r for r in stopped if r.matches(m)), None)
            if part is not None and part.live:
                print(f"  {m.split} {m.model} seed {m.seed}: training now in {part.run_dir} "
                      f"(step {part.steps_done} of {part.steps_total}); not queued", file=sys.stderr)
                continue
            print(m.command if part is None else part.command)
            est = time_estimate(records, m.model, protocol_epochs(m.config) or 1, host=here)
            guess, left, what = "", 1.0, "min"
            if part is not None:
                guess = f"resumes {part.run_dir.name} at step {part.steps_done} of {part.steps_total}"
                if part.live is None:
                    guess += " (an older record that cannot say whether it still trains: check first)"
                guess, left, what = guess + "; ", part.fraction_left, "min left"
            else:
                # a record whose checkpoint did not come along (never committed): say so rather than skip it quietly
                for gone in (r for r in lost if r.matches(m)):
                    guess += (f"{gone.run_dir.name} stopped at step {gone.steps_done} of {gone.steps_total} with "
                              "no checkpoint to resume from: started afresh (remove that folder); ")
            if est is None:
                guess += "no earlier run of this model to time"
            else:
                guess += f"about {est.minutes * left:.0f} {what}, scaled from {est.run_id}"
                if est.host_factor is not None:
                    guess += (f" and by {est.host_factor:.2f} for this machine (from {', '.join(est.factor_models)},"
                              " timed on both)")
                elif not est.same_host:
                    guess += " (not timed on a machine like this one)"
            print(f"  {m.split} {m.model} seed {m.seed}: {guess}", file=sys.stderr)
        return 0
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_summary(rows) if rows else f"no completed runs under {runs}")
    return 0


def _add_results(sub: argparse._SubParsersAction) -> None:
    from smelib.settings import repo_root

    p = sub.add_parser("results",
                       help="one row per (config, model, split) over the run records, mean and std over seeds")
    p.add_argument("--runs", default=str(repo_root() / "results" / "runs"), help="folder of run directories")
    p.add_argument("--csv", help="also write the table as CSV (e.g. results/summary.csv)")
    p.add_argument("--json", action="store_true", help="print JSON rows")
    p.add_argument("--missing", action="store_true",
                   help="print the `smelib train` commands of the planned runs still missing (the tables', then the "
                        "initialisation ablation's), one per line (stdout), and a wall-time guess for each from "
                        "earlier records (stderr)")
    p.set_defaults(func=_cmd_results)


def _cmd_compare(args: argparse.Namespace) -> int:
    from smelib.study.qualitative import ComparisonError, build_comparison, save_comparison
    from smelib.records import PredictionsError

    runs: dict[str, str] = {}
    for item in args.runs:
        label, spec = _labelled_run(item)
        if label in runs:
            raise CLIError(f"label {label!r} given twice")
        runs[label] = spec
    out = Path(args.out)
    if (out / "comparison.json").exists() and not args.force:
        raise CLIError(f"{out / 'comparison.json'} exists; add --force to overwrite it")
    try:
        comp = build_comparison(runs, data_root=args.data_root, subset=args.subset, per_class=args.per_class,
                                failures=args.failures, device=args.device, progress=True)
        path = save_comparison(comp, out, force=args.force)
    except (*user_errors(), ComparisonError, PredictionsError) as err:
        raise CLIError(str(err)) from None
    print(f"wrote {path} and {len(comp.examples)} examples ({len(comp.ids)} {args.subset} images scored)")
    return 0


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="several runs on the same test images: per-image scores and Fig.-9 examples")
    p.add_argument("runs", nargs="+", metavar="LABEL=RUN", help="display label = run folder (its stored test "
                   "predictions if it has them, else its checkpoint) or checkpoint; the first is the reference that "
                   "picks the examples")
    p.add_argument("--out", required=True, help="folder for comparison.json and the example PNGs")
    p.add_argument("--subset", choices=["test", "val"], default="test")
    p.add_argument("--per-class", type=int, default=1, help="typical images per defect class (default 1)")
    p.add_argument("--failures", type=int, default=2, help="the reference's worst images (default 2)")
    p.add_argument("--data-root", help="dataset folder (default: the one the first run was trained on)")
    p.add_argument("--device", default="cpu", type=device_arg, help="cpu, cuda, cuda:N")
    p.add_argument("--force", action="store_true", help="overwrite an existing comparison")
    p.set_defaults(func=_cmd_compare)


def _labelled_run(item: str) -> tuple[str, str]:
    label, sep, spec = item.partition("=")
    if not sep or not label or not spec:
        raise CLIError(f"{item!r}: expected LABEL=RUN_DIR_OR_CHECKPOINT")
    return label, spec


def _cmd_bootstrap(args: argparse.Namespace) -> int:
    from smelib.study.bootstrap import (BootstrapError, bootstrap_class_table, paired_bootstrap_runs,
                                        write_bootstrap_record)
    from smelib.study.qualitative import ComparisonError
    from smelib.records import PredictionsError

    better, worse = _labelled_run(args.better), _labelled_run(args.worse)
    try:
        outcome, record = paired_bootstrap_runs(better, worse, data_root=args.data_root, n_boot=args.boot,
                                                seed=args.seed, level=args.level, device=args.device,
                                                shared_images=args.shared_images, groups=args.groups,
                                                unit=args.unit)
        path = write_bootstrap_record(record, args.out, force=args.force) if args.out else None
    except (*user_errors(), BootstrapError, ComparisonError, PredictionsError) as err:
        raise CLIError(str(err)) from None
    o = outcome
    units = f"{o.n_images} images" if o.unit == "image" else f"{o.n_images} images in {o.n_units} {o.unit}s"
    print(f"{o.better} {100 * o.miou_better:.2f} vs {o.worse} {100 * o.miou_worse:.2f} test mIoU over "
          f"{units}: difference {100 * o.difference:+.2f} points, {100 * o.level:.0f} % interval "
          f"[{100 * o.low:+.2f}, {100 * o.high:+.2f}] ({o.n_boot} paired resamples of whole {o.unit}s, seed {o.seed}); "
          f"{o.better} not better in {100 * o.p_not_better:.1f} % of them: {o.verdict}")
    print(bootstrap_class_table(record))
    if path is not None:
        print(f"wrote {path}")
    return 0


def _add_bootstrap(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bootstrap", help="paired bootstrap over the test set: does run A beat run B beyond test-set "
                       "noise? Resamples whole groups of near-duplicate images when the test images share groups")
    p.add_argument("better", metavar="LABEL=RUN", help="the run claimed better: run folder (stored test predictions "
                   "if it has them, else its checkpoint) or checkpoint")
    p.add_argument("worse", metavar="LABEL=RUN", help="the run claimed worse, trained on the same split (unless "
                   "--shared-images)")
    p.add_argument("--shared-images", action="store_true", help="runs of different splits (e.g. leaky and grouped), "
                   "scored on the test images both test sets hold")
    p.add_argument("--groups", help="groups JSON whose groups are resampled whole (default: the first run config's "
                   "data.groups, e.g. results/audit/neu_seg_groups.json)")
    p.add_argument("--unit", choices=["group", "copy-group", "image"], default="group", help="what is resampled "
                   "whole: the groups file's groups (default; the split's independent unit), its copy groups (rotated "
                   "copies only), or single images (too narrow when test images are copies; for comparison only)")
    p.add_argument("--boot", type=int, default=2000, help="resamples (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="resampling seed (default 0)")
    p.add_argument("--level", type=float, default=0.95, help="interval coverage (default 0.95)")
    p.add_argument("--out", help="folder for the JSON record (e.g. results/bootstrap); none: print only")
    p.add_argument("--force", action="store_true", help="overwrite an existing record")
    p.add_argument("--data-root", help="dataset folder (default: the one the first run was trained on)")
    p.add_argument("--device", default="cpu", type=device_arg, help="cpu, cuda, cuda:N")
    p.set_defaults(func=_cmd_bootstrap)


def _cmd_decisions(args: argparse.Namespace) -> int:
    from smelib.study.decisions import DecisionRecordError, decision_record, decision_record_path, write_decision_record

    for run in args.runs:  # refuse before spending minutes on a record that could not be written
        record_json = Path(run) / "record.json"
        try:
            run_id = json.loads(record_json.read_text()).get("run_id") if record_json.is_file() else None
        except ValueError as err:
            raise CLIError(f"{record_json}: not valid JSON ({err})") from None
        if run_id and not args.force and decision_record_path({"run_id": run_id}, args.out).exists():
            raise CLIError(f"{decision_record_path({'run_id': run_id}, args.out)} exists; add --force to overwrite it")
    for run in args.runs:
        try:
            record = decision_record(run, data_root=args.data_root, device=args.device)
            path = decision_record_path(record, args.out)
            if path.exists() and not args.force:
                raise CLIError(f"{path} exists; add --force to overwrite it")
            write_decision_record(record, args.out, force=args.force)
        except (*user_errors(), DecisionRecordError, ValueError) as err:
            raise CLIError(f"{run}: {err}" if str(run) not in str(err) else str(err)) from None
        m, cross = record["metrics"], record["cross_check"]
        parts = [f"{rule} mIoU {100 * v['miou']:.2f} %" for rule, v in m.items()]
        check = "" if cross["record_miou"] is None else (
            f"; run record {100 * cross['record_miou']:.2f} % ({'agrees' if cross['agree'] else 'not comparable'})")
        print(f"wrote {path}: {record['images']} {record['subset']} images, " + ", ".join(parts) + check
              + f" [{record['wall_seconds']:.0f} s]")
    return 0


def _add_decisions(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decisions", help="a run's test images under the argmax, static and dynamic decision "
                                         "rules in one pass, as results/mechanisms/decisions_<run_id>.json")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (results/runs/<id>) or checkpoints")
    p.add_argument("--out", default="results/mechanisms", help="folder for the records (default results/mechanisms)")
    p.add_argument("--data-root", help="dataset folder (default: the one each run was trained on)")
    p.add_argument("--device", default="cpu", type=device_arg, help="cpu, cuda, cuda:N")
    p.add_argument("--force", action="store_true", help="overwrite existing records")
    p.set_defaults(func=_cmd_decisions)


def _cmd_paired(args: argparse.Namespace) -> int:
    from pathlib import Path

    from smelib.study.paired_runs import paired_curve_table, paired_seed_table, paired_summary_table, seed_pairs
    from smelib.study.results import load_records

    runs = Path(args.runs)
    if not runs.is_dir():
        raise CLIError(f"no runs folder {str(runs)!r}")
    try:
        pairs = seed_pairs(load_records(runs), args.option, base_config=args.base, model=args.model,
                           split=args.split, epochs=args.epochs)
    except ValueError as err:
        raise CLIError(str(err)) from err
    if not pairs:
        raise CLIError(f"no seed has completed runs of both {args.base!r} and {args.option!r} "
                       f"({args.model}, {args.split} split) under {runs}")
    names = tuple(pairs[0].base.get("class_names") or ())
    print(paired_seed_table(pairs, args.option, class_names=names))
    print()
    print(paired_summary_table(pairs, args.option, min_seeds=args.min_seeds))
    print()
    print(paired_curve_table(pairs, args.option))
    return 0


def _add_paired(sub: argparse._SubParsersAction) -> None:
    from smelib.settings import repo_root

    p = sub.add_parser("paired", help="a training option against its protocol, seed by seed (e.g. "
                                      "cpu_budget_prior vs cpu_budget), with the book's effect criterion")
    p.add_argument("option", help="the option's config name (the runs' name=..., e.g. cpu_budget_prior)")
    p.add_argument("--base", default="cpu_budget", help="the protocol it modifies (default cpu_budget)")
    p.add_argument("--model", default="sme_deeplabv3plus", help="model name (default sme_deeplabv3plus)")
    p.add_argument("--split", default="grouped", choices=["official", "grouped"], help="split kind")
    p.add_argument("--epochs", type=int, help="training length both runs must have (default: the base's)")
    p.add_argument("--min-seeds", type=int, default=3, help="fewest seed pairs a verdict needs (default 3)")
    p.add_argument("--runs", default=str(repo_root() / "results" / "runs"), help="folder of run directories")
    p.set_defaults(func=_cmd_paired)


# Every subcommand, in the order `smelib --help` lists them.


def _attach_table2(sub: argparse._SubParsersAction) -> None:
    # `smelib flops --table2` is declared by the product command; the paper's numbers it prints live here.
    if "flops" in sub.choices:
        sub.choices["flops"].set_defaults(table2_func=_cmd_table2)


#: The study commands, in the order ``smelib --help`` lists them.
STUDY_COMMANDS = [_attach_table2, _add_reproduce, _add_results, _add_compare, _add_bootstrap, _add_decisions,
                  _add_paired]
