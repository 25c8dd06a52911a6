"""What holds of the paper's claims, computed rather than typed: the book's title page and the README use it.

Cost rows count our models now (thop's rules, the paper's convention); accuracy rows read
``results/summary.csv``, which ``smelib results`` builds from the run records.
"""

from __future__ import annotations

import csv
import statistics
from typing import Any
from pathlib import Path

import torch

from smelib.tools.flops import thop_count
from smelib.study.table2 import TABLE2
from smelib.settings import repo_root
from smelib.study.tables import Table

#: The paper's headline numbers for its full model (percent, the paper's own).
PAPER_SME = {"miou": 88.87, "precision": 92.72, "mpa": 96.10}


def table2_matches(height: int = 512, width: int = 512) -> list[tuple[str, bool]]:
    """For each row of the paper's Table 2: our configuration and whether both its numbers match to 3 decimals."""
    from smelib.models import build

    out = []
    for row in TABLE2:
        torch.manual_seed(0)
        count = thop_count(build(row.config), torch.zeros(1, 3, height, width))
        ok = round(count.paper_gflops, 3) == row.paper_gflops and round(count.params / 1e6, 3) == row.paper_params_m
        out.append((row.config, ok))
    return out


def read_summary(path: Path | None = None) -> list[dict[str, str]]:
    """Rows of ``results/summary.csv`` (empty when no run has been aggregated yet)."""
    path = path or repo_root() / "results" / "summary.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _longest_row(summary: list[dict[str, str]], model: str, split: str) -> dict[str, str] | None:
    """The row of ``model`` on ``split`` trained for the most epochs under any budget (ties: most seeds)."""
    found = [r for r in summary if r.get("model") == model and r.get("split") == split
             and r.get("epochs") not in (None, "")]
    return max(found, key=lambda r: (int(r["epochs"]), int(r["n_seeds"])), default=None)


def reproduction_table() -> Table:
    """One row per claim of the paper: what we measured, and how it compares."""
    matches = table2_matches()
    n_ok = sum(ok for _, ok in matches)
    rows: list[list[object]] = [[
        "Table 2: GFLOPs and parameters (thop × 2, 512 px)",
        "74.604 / 71.281 / 56.845 G",
        f"{n_ok} of {len(matches)} rows equal to 3 decimals",
    ]]
    from smelib.study.plan import pick_row

    summary = read_summary()
    for model, split in [(m, s) for m in ("sme_deeplabv3plus", "sme_deeplabv3plus_lite")
                         for s in ("official", "grouped")]:
        # the protocol's row; else the longest-trained row of another budget (for the lite model, the headroom's
        # run, or the shipped checkpoint's), whose config and epoch count the cell states
        r = pick_row(summary, model, split) or _longest_row(summary, model, split)
        if r is None:
            ours = "not run yet"
        else:
            # summary.csv holds fractions; a single seed has no spread, which is not a spread of zero
            std = r.get("miou_std")
            spread = f" ± {100 * float(std):.2f}" if std not in (None, "") else ""
            ep = f", {r['epochs']} epochs" if r.get("epochs") not in (None, "") else ""
            ours = f"{100 * float(r['miou_mean']):.2f}{spread} (n={r['n_seeds']}, {r['config']}{ep})"
        label = "SME-DeepLabV3+" if model == "sme_deeplabv3plus" else "SME-DeepLabV3+ lite (StarNet-s1)"
        rows.append([f"{label} test mIoU, {split} split", f"{PAPER_SME['miou']:.2f} (full model, official split)",
                     ours])
    from smelib.study.headroom import HEADROOM_STEPS, step_result
    from smelib.study.results import load_eval_records

    evals = load_eval_records(repo_root() / "results" / "headroom")
    official = [s for s in HEADROOM_STEPS if s.split == "official"]
    done = [(step, res) for step in official
            if (res := step_result(step, summary, evals)) is not None and res["miou"] is not None]
    if done:
        step, res = max(done, key=lambda d: d[1]["miou"])
        best = f"{100 * res['miou']:.2f} (step '{step.key}', the best of {len(done)}; chapter 'Recipe headroom')"
    else:
        best = "no record"
    rows.append(["Recipe headroom: best official-split test mIoU within 2 CPU hours per run",
                 f"{PAPER_SME['miou']:.2f} (300 GPU epochs)", best])
    for step in HEADROOM_STEPS:
        if step.split == "official":
            continue
        res = step_result(step, summary, evals)  # its summary row: the seed mean and spread
        if res is None or res["miou"] is None:
            ours = f"not run yet: {step.command}"
        elif step.kind == "eval":  # its baseline is the same weights without the change, not the protocol
            ours = (f"{100 * res['miou']:.2f} ({100 * (res['miou'] - res['baseline_miou']):+.2f} against "
                    f"{100 * res['baseline_miou']:.2f} on the same weights without it)")
        else:
            sd = "" if res["std"] is None else f" ± {100 * res['std']:.2f}"  # one seed has no spread
            base = ("no protocol row on this split" if res["baseline_miou"] is None
                    else f"the protocol's {100 * res['baseline_miou']:.2f} on this split")
            ours = f"{100 * res['miou']:.2f}{sd} ({res['n']} of {len(step.seeds)} seeds; {base})"
        rows.append([f"Recipe headroom, step '{step.key}': {step.change}", f"– (no {step.split} split in the paper)",
                     ours])
    rows.append(leak_row(summary))
    from smelib.study.conclusions import CONCLUSIONS, conclusion_verdict, paper_difference, pooled_seed_std

    pooled = pooled_seed_std(summary, "grouped")
    for c in CONCLUSIONS:  # the paper's qualitative claims, read on the honest split with the seed spread
        diff, verdict = conclusion_verdict(pick_row(summary, c.better, "grouped"),
                                           pick_row(summary, c.worse, "grouped"), pooled=pooled)
        ours = verdict if diff is None else f"{diff:+.2f} points, grouped split: {verdict}"
        rows.append([c.claim, paper_difference(c), ours])
    rows += mechanism_rows()
    return Table(["claim", "paper", "ours"], rows, title="Reproduction status")


def leak_row(summary: list[dict[str, str]] | None = None, bootstrap: list[dict] | None = None,
             audit: dict | None = None) -> list[object]:
    """The status row of NEU-Seg's official split: how many official test images have a copy in training (the
    audit record), the official − grouped test-mIoU gap over the models measured on both splits
    (:func:`smelib.study.conclusions.split_gap`), and what the copies are worth on fixed test pictures (the bootstrap
    records of a ``leaky``-split run against a ``grouped``-split run on their shared test images).

    Args:
        summary: summary rows (default ``results/summary.csv``); bootstrap: bootstrap records (default
            ``results/bootstrap``); audit: the audit document (default ``results/audit/audit.json``).
    """
    import json

    from smelib.study.bootstrap import load_bootstrap_records
    from smelib.study.conclusions import split_gap

    summary = read_summary() if summary is None else summary
    if bootstrap is None:
        bootstrap = load_bootstrap_records(repo_root() / "results" / "bootstrap")
    if audit is None:
        path = repo_root() / "results" / "audit" / "audit.json"
        audit = json.loads(path.read_text()) if path.is_file() else {}
    parts = []
    leak = (audit.get("audit") or {}).get("official_test_leakage")
    if leak:
        parts.append(f"{leak['with_a_copy_in_training']} of {leak['test_images']} official test images have a copy "
                     "in training")
    gap = split_gap(summary)
    if gap.pairs:
        se = "" if gap.se is None else f" ± {100 * gap.se:.2f} (s.e.)"
        parts.append(f"official − grouped test mIoU {100 * gap.mean:+.2f}{se} points over {len(gap.pairs)} model"
                     + ("s" if len(gap.pairs) > 1 else ""))
    fixed = [r for r in bootstrap if (r.get("split") or {}).get("kind") == "leaky vs grouped"]
    for rec in fixed:
        o = rec["outcome"]
        parts.append(f"on the same {o['n_images']} test pictures, trained with their copies − without "
                     f"{100 * o['difference']:+.2f} points, test-set interval [{100 * o['low']:+.2f}, "
                     f"{100 * o['high']:+.2f}] ({rec['runs'][0]['model']}, one run each)")
    if not fixed:
        parts.append("the copies alone, on fixed test pictures: not yet measured")
    return ["NEU-Seg's official test set holds pictures unseen in training", "assumed (no audit)", "; ".join(parts)]


def mechanism_rows(records: list[dict] | None = None, decisions: list[dict] | None = None) -> list[list[object]]:
    """Status rows of the paper's two unspecified mechanisms, in our readings (chapter "What the paper leaves
    unspecified"): the classifier prior and the class weights from seed-paired runs (:mod:`smelib.study.paired_runs`)
    and the dynamic threshold from the decision records, both on the grouped split and judged by
    :func:`smelib.study.paired_runs.effect_verdict` against the protocol's own seed spread of test mIoU.

    Args:
        records: run records (default: ``results/runs``); decisions: decision records (default:
            ``results/mechanisms``, the protocol's SME runs, one per seed).
    """
    out: list[list[object]] = []
    readings = {"prior": ("Adaptive weight initialisation (our reading: classifier bias = log class prior)",
                          "with vs without, same seed"),
                "class_weights": ("Adaptive weight initialisation (second reading: inverse-sqrt class weights in the "
                                  "loss)", "with vs without, same seed"),
                "dynamic": ("Dynamic threshold adjustment (our reading: per-image decision threshold from defect "
                            "size)", "dynamic vs argmax, same probabilities")}
    for key, (diffs, base) in mechanism_effects(records, decisions).items():
        claim, what = readings[key]
        if not diffs:
            ours = "not yet measured"
        else:
            spread = f" ± {statistics.stdev(diffs):.2f}" if len(diffs) > 1 else ""
            seeds = f"{len(diffs)} grouped seed" + ("s" if len(diffs) != 1 else "")
            ours = (f"{statistics.fmean(diffs):+.2f}{spread} points test mIoU, {seeds} paired ({what}): "
                    f"{_effect(diffs, base)}")
        out.append([claim, "credited, no number or ablation row", ours])
    return out


def _effect(diffs: list[float], base: list[float]) -> str:
    """:func:`smelib.study.paired_runs.effect_verdict` against the protocol's own seed spread of test mIoU."""
    from smelib.study.paired_runs import effect_verdict

    return effect_verdict(diffs, statistics.stdev(base) if len(base) > 1 else None)


def mechanism_effects(records: list[dict] | None = None,
                      decisions: list[dict] | None = None) -> dict[str, tuple[list[float], list[float]]]:
    """The paper's unspecified mechanisms, measured: for ``prior``, ``class_weights`` and ``dynamic``, the paired
    test-mIoU differences in points (one per grouped seed) and the protocol's own test mIoU of the same seeds.

    Args:
        records: run records (default: ``results/runs``); decisions: decision records (default:
            ``results/mechanisms``, the protocol's SME runs, one per seed).
    """
    from smelib.study.decisions import decision_differences, load_decision_records, select_decision_records
    from smelib.study.paired_runs import seed_pairs
    from smelib.study.results import load_records

    if records is None:
        records = load_records(repo_root() / "results" / "runs")
    if decisions is None:
        decisions = select_decision_records(load_decision_records(repo_root() / "results" / "mechanisms"))
    out: dict[str, tuple[list[float], list[float]]] = {}
    for key, option in (("prior", "cpu_budget_prior"), ("class_weights", "cpu_budget_cw")):
        pairs = seed_pairs(records, option)
        out[key] = ([p.difference(("miou",)) for p in pairs], [100 * p.value("base", ("miou",)) for p in pairs])
    scored = [r for r in decisions if "dynamic" in r["metrics"]]
    out["dynamic"] = ([float(decision_differences(r)["dynamic"]["mIoU"]) for r in scored],
                      [100 * float(r["metrics"]["argmax"]["miou"]) for r in scored])
    return out


#: Short display names of the registry models the status table names.
_SHORT = {"sme_deeplabv3plus": "SME", "deeplabv3plus_mobilenetv2": "MobileNetV2", "deeplabv3plus_xception": "Xception",
          "hrnet": "HRNet", "pspnet": "PSPNet", "resunet": "Res-UNet", "starnet_msaa": "MSAA", "starnet_aspp": "ASPP",
          "starnet_aspp_ela": "ASPP + ELA"}


def _signed(value: float) -> str:
    return f"{value:+.2f}".replace("-", "−")


def _verdict_word(verdict: str) -> str:
    """The verdict of :func:`smelib.study.conclusions.conclusion_verdict` without its explanation."""
    return verdict.split(" (")[0]


def _mean_std(row: dict[str, str] | None) -> str:
    if row is None:
        return "not run yet"
    std = row.get("miou_std")
    return f"{100 * float(row['miou_mean']):.2f}" + (f" ± {100 * float(std):.2f}" if std not in (None, "") else "")


def _bench_cell() -> str:
    import json

    folder = repo_root() / "results" / "bench"
    found, hosts = [], set()
    for name, label in (("sme_deeplabv3plus_infer.json", "fp32"), ("sme_deeplabv3plus_infer_cpu_bf16.json", "bf16")):
        path = folder / name
        if path.is_file():
            rec = json.loads(path.read_text())
            found.append(f"{rec['optimised']['images_per_s']:.0f} images/s {label}")
            machine = rec["record"]["machine"]
            hosts.add(f"{machine['cpu_count']} cores of an {machine['cpu_model'].split(' Processor')[0]}")
    if not found:
        return "not measured yet"
    return f"{', '.join(found)} ({', '.join(sorted(hosts))}; the paper's model, 200 px; chapter 'Speed')"


def headline_table() -> Table:
    """The reproduction at a glance: at most ten rows, each cell a line (the README's table and the book's title
    page both show it; :func:`reproduction_table` has every claim in detail)."""
    from smelib.study.conclusions import PAPER_MIOU, CONCLUSIONS, conclusion_verdict, pooled_seed_std, split_gap
    from smelib.study.headroom import HEADROOM_STEPS, step_result
    from smelib.study.plan import pick_row
    from smelib.study.results import load_eval_records

    summary = read_summary()
    matches = table2_matches()
    rows: list[list[object]] = [["Table 2: GFLOPs and parameters", "74.604 / 71.281 / 56.845 G (thop × 2, 512 px)",
                                 f"{sum(ok for _, ok in matches)} of {len(matches)} rows equal to 3 decimals"]]
    sme = [pick_row(summary, "sme_deeplabv3plus", split) for split in ("official", "grouped")]
    rows.append(["Test mIoU of SME-DeepLabV3+", f"{PAPER_SME['miou']:.2f} (512 px, 300 GPU epochs)",
                 f"{_mean_std(sme[0])} official, {_mean_std(sme[1])} grouped split (200 px, 6 CPU epochs)"])
    evals = load_eval_records(repo_root() / "results" / "headroom")
    steps = [(s, step_result(s, summary, evals)) for s in HEADROOM_STEPS if s.kind == "train"]
    done = [(s, r) for s, r in steps if r is not None and r["miou"] is not None]
    best = {split: max(((s, r) for s, r in done if s.split == split), key=lambda d: d[1]["miou"], default=None)
            for split in ("official", "grouped")}
    parts = [f"{100 * r['miou']:.2f}" + (f" ± {100 * r['std']:.2f}" if r["std"] is not None else "")
             + f" {split} ({s.model.removeprefix('sme_deeplabv3plus').strip('_') or 'full'} model, {s.epochs} epochs)"
             for split, found in best.items() if found is not None for s, r in [found]]
    rows.append(["Best test mIoU in 2 CPU hours per run", "–", "; ".join(parts) or "not run yet"])
    gap = split_gap(summary)
    leak = leak_row(summary)[2].split(";")[0]
    rows.append(["NEU-Seg's official test set is unseen in training", "assumed",
                 f"no: {leak}; official − grouped {_signed(100 * gap.mean)} points over {len(gap.pairs)} models"
                 if gap.pairs else f"no: {leak}"])
    pooled = pooled_seed_std(summary, "grouped")

    def verdict(c: Any) -> tuple[float | None, str]:
        diff, text = conclusion_verdict(pick_row(summary, c.better, "grouped"), pick_row(summary, c.worse, "grouped"),
                                        pooled=pooled)
        return diff, _verdict_word(text)

    def verdicts(claims: list[str]) -> str:
        out = []
        for c in (c for c in CONCLUSIONS if c.claim.split(" (")[0] in claims):
            diff, word = verdict(c)
            out.append(f"{_SHORT.get(c.worse, c.worse)} {word}" + (f" ({_signed(diff)})" if diff is not None else ""))
        return "; ".join(out)

    rows.append(["StarNet beats MobileNetV2 and Xception", "claimed",
                 verdicts(["StarNet beats MobileNetV2", "StarNet beats Xception"])])
    modules = [c for c in CONCLUSIONS if c.better in PAPER_MIOU and c.worse in PAPER_MIOU]
    words = {verdict(c)[1] for c in modules}
    rows.append(["MSAA and ELA help (Table 3)",
                 ", ".join(_signed(PAPER_MIOU[c.better] - PAPER_MIOU[c.worse]) for c in modules) + " points",
                 f"all {len(modules)} differences {words.pop()} (chapter 'Ablations')" if len(words) == 1
                 else "mixed (chapter 'Ablations')"])
    rows.append(["SME beats HRNet, PSPNet and Res-UNet (Table 1)", "claimed",
                 verdicts(["SME beats HRNet", "SME beats PSPNet", "SME beats Res-UNet"])])
    names = {"prior": "class prior", "class_weights": "class weights", "dynamic": "dynamic threshold"}
    rows.append(["Adaptive initialisation, dynamic threshold", "credited, no number",
                 "; ".join(f"{names[key]} {_signed(statistics.fmean(diffs))}: {_effect(diffs, base)}"
                           for key, (diffs, base) in mechanism_effects().items() if diffs)
                 or "not yet measured"])
    rows.append(['"Efficient"', "claimed", _bench_cell()])
    return Table(["claim", "paper", "ours"], rows, title="Reproduction status at a glance")


def markdown_table(table: Table) -> str:
    """A :class:`smelib.study.tables.Table` as a GitHub Markdown table (the README's status table)."""
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.rows]
    return "\n".join(lines)
