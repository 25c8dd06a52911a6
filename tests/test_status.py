"""The reproduction-status table reads summary rows correctly (fractions shown as percent, one seed no spread)."""

from smelib.study import status


def test_status_reports_percent_and_no_false_spread(monkeypatch) -> None:
    rows = [{"model": "sme_deeplabv3plus", "split": "grouped", "config": "cpu_budget", "n_seeds": "1",
             "miou_mean": "0.7533", "miou_std": "", "seeds": "0"},
            {"model": "sme_deeplabv3plus", "split": "official", "config": "cpu_budget", "n_seeds": "3",
             "miou_mean": "0.80", "miou_std": "0.012", "seeds": "0 1 2", "epochs": "6"}]
    monkeypatch.setattr(status, "read_summary", lambda path=None: rows)
    monkeypatch.setattr(status, "table2_matches", lambda: [("starnet_msaa", True), ("starnet_aspp", False)])
    # no evaluation records either, so the headroom row reads only these rows (the repository's own records
    # include TTA pairs that would outrank them)
    monkeypatch.setattr("smelib.study.results.load_eval_records", lambda path: [])
    text = str(status.reproduction_table())
    assert "1 of 2 rows equal" in text
    assert "75.33 (n=1, cpu_budget)" in text
    assert "80.00 ± 1.20 (n=3, cpu_budget, 6 epochs)" in text
    assert "not run yet" in text  # the lite model has no row here
    assert "StarNet beats MobileNetV2" in text and "not yet measured" in text  # no baseline row given
    # the protocol's official row is the headroom's first step, so it is the best one measured here
    assert "80.00 (step 'protocol', the best of " in text
    assert "Recipe headroom, step 'grouped'" in text and "not run yet: for S in 0 1 2" in text


def test_status_reads_the_grouped_headroom_step_with_its_spread_and_never_as_the_official_best(monkeypatch) -> None:
    from smelib.study.headroom import HEADROOM_STEPS

    grouped = next(s for s in HEADROOM_STEPS if s.split == "grouped")
    proto = {"model": "sme_deeplabv3plus", "config": "cpu_budget", "epochs": "6", "seeds": "0 1 2"}
    rows = [{**proto, "split": "official", "n_seeds": "2", "miou_mean": "0.78", "miou_std": "0.002"},
            {**proto, "split": "grouped", "n_seeds": "3", "miou_mean": "0.76", "miou_std": "0.003"},
            {"model": grouped.model, "config": grouped.config, "epochs": str(grouped.epochs), "split": "grouped",
             "n_seeds": "2", "miou_mean": "0.9", "miou_std": "0.01", "seeds": "0 1"}]
    monkeypatch.setattr(status, "read_summary", lambda path=None: rows)
    monkeypatch.setattr(status, "table2_matches", lambda: [("starnet_msaa", True)])
    monkeypatch.setattr("smelib.study.results.load_eval_records", lambda path: [])
    text = str(status.reproduction_table())
    assert "90.00 ± 1.00 (2 of 3 seeds; the protocol's 76.00 on this split)" in text
    # the grouped step outscores the official protocol here, but the official row names only official steps
    assert "78.00 (step 'protocol', the best of 1; " in text
    # without a protocol row on its split the step still reads, and says what it lacks
    del rows[1]
    assert "90.00 ± 1.00 (2 of 3 seeds; no protocol row on this split)" in str(status.reproduction_table())


def test_status_reads_an_inference_step_on_the_grouped_split_against_its_own_weights(monkeypatch) -> None:
    from smelib.study.headroom import HEADROOM_STEPS

    step = next(s for s in HEADROOM_STEPS if s.split == "grouped" and s.kind == "eval")
    monkeypatch.setattr(status, "read_summary", lambda path=None: [])
    monkeypatch.setattr(status, "table2_matches", lambda: [("starnet_msaa", True)])
    monkeypatch.setattr("smelib.study.results.load_eval_records", lambda path: [])
    assert f"Recipe headroom, step '{step.key}'" in (text := str(status.reproduction_table()))
    assert "not run yet: smelib eval" in text
    base, changed = ({"file": f, "model": "m", "subset": "test", "images": 10, "metrics": {"miou": v}}
                     for f, v in zip(step.eval_files, (0.75, 0.7725)))
    monkeypatch.setattr("smelib.study.results.load_eval_records", lambda path: [base, changed])
    text = str(status.reproduction_table())
    # the baseline is the same weights without TTA, never the protocol row (there is none here)
    assert "77.25 (+2.25 against 75.00 on the same weights without it)" in text
    assert "77.25 (step" not in text  # a grouped step is never the official best


def test_status_falls_back_to_another_budget_and_names_its_epochs(monkeypatch) -> None:
    # the shipped lite checkpoint's run (4 epochs) is not at the protocol's epochs: shown, with its epoch count
    rows = [{"model": "sme_deeplabv3plus_lite", "split": "official", "config": "cpu_budget", "n_seeds": "1",
             "miou_mean": "0.7533", "miou_std": "", "seeds": "0", "epochs": "4"},
            {"model": "sme_deeplabv3plus_lite", "split": "official", "config": "cpu_budget", "n_seeds": "1",
             "miou_mean": "0.70", "miou_std": "", "seeds": "0", "epochs": "2"}]
    monkeypatch.setattr(status, "read_summary", lambda path=None: rows)
    monkeypatch.setattr(status, "table2_matches", lambda: [("starnet_msaa", True)])
    text = str(status.reproduction_table())
    assert "75.33 (n=1, cpu_budget, 4 epochs)" in text and "70.00" not in text


def test_mechanism_rows_pair_seeds_and_apply_the_effect_criterion() -> None:
    def run(config: str, seed: int, miou: float) -> dict:
        return {"run_id": f"{config}_{seed}", "config_name": config, "model": "sme_deeplabv3plus", "seed": seed,
                "split": {"kind": "grouped"}, "epochs": 6, "status": "completed", "finished_utc": "x",
                "final": {"test": {"miou": miou, "iou": [0.9, miou]}}}

    def decision(seed: int, argmax: float, dynamic: float) -> dict:
        m = {"miou": argmax, "defects_only": {"miou": argmax}, "precision": argmax, "mpa": argmax}
        return {"run_id": f"d{seed}", "seed": seed, "metrics": {"argmax": m, "dynamic": {**m, "miou": dynamic}}}

    base = [run("cpu_budget", s, m) for s, m in ((0, 0.764), (1, 0.766), (2, 0.770))]
    prior = [run("cpu_budget_prior", s, m + 0.001) for s, m in ((0, 0.764), (1, 0.766))]
    weights = [run("cpu_budget_cw", s, m - 0.02) for s, m in ((0, 0.764), (1, 0.766), (2, 0.770))]
    decisions = [decision(s, m, m - 0.0033) for s, m in ((0, 0.764), (1, 0.766), (2, 0.770))]
    init, cw, dyn = status.mechanism_rows(base + prior + weights, decisions)
    assert "+0.10 ± 0.00 points test mIoU, 2 grouped seeds paired" in init[2] and "no verdict: 2 of 3" in init[2]
    assert "-2.00 ± 0.00 points test mIoU, 3 grouped seeds paired" in cw[2] and cw[2].endswith("hurts")
    # -0.33 in every seed, above the argmax runs' own seed std (0.31): the rule hurts
    assert "-0.33 ± 0.00 points test mIoU, 3 grouped seeds paired" in dyn[2] and dyn[2].endswith("hurts")
    assert [row[2] for row in status.mechanism_rows(base, [])] == ["not yet measured"] * 3


def test_leak_row_reads_the_audit_the_split_gap_and_the_fixed_picture_pairs() -> None:
    def row(model: str, split: str, miou: float) -> dict:
        return {"model": model, "split": split, "config": "cpu_budget", "n_seeds": "1", "miou_mean": str(miou),
                "miou_std": "", "seeds": "0", "epochs": "6"}

    summary = [row("a", "official", 0.80), row("a", "grouped", 0.78), row("b", "official", 0.77),
               row("b", "grouped", 0.76)]
    audit = {"audit": {"official_test_leakage": {"test_images": 840, "with_a_copy_in_training": 810}}}
    claim, paper, ours = status.leak_row(summary, [], audit)
    assert "810 of 840 official test images" in ours and "+1.50 ± 0.50 (s.e.) points over 2 models" in ours
    assert ours.endswith("on fixed test pictures: not yet measured")
    pair = {"split": {"kind": "leaky vs grouped"}, "runs": [{"model": "a"}, {"model": "a"}],
            "outcome": {"n_images": 201, "difference": 0.0123, "low": 0.002, "high": 0.021}}
    same = {"split": {"kind": "grouped"}, "runs": [{"model": "a"}, {"model": "b"}], "outcome": {}}
    ours = status.leak_row(summary, [same, pair], {})[2]
    assert "official test images" not in ours and "not yet measured" not in ours
    assert "on the same 201 test pictures, trained with their copies − without +1.23 points" in ours
    assert "[+0.20, +2.10] (a, one run each)" in ours


def test_readme_status_numbers_come_from_the_run_records() -> None:
    """Every two-decimal accuracy figure in the README's status table is one the committed summary gives: a
    row's mean or spread, or the difference of two rows' means, in points (or a number of the paper's, or an
    evaluation record's mIoU or a paired difference of two of them, a paired-bootstrap record's figure, or the
    mean or spread over seeds of a decision rule's or a training option's paired difference), so a
    new run record that changes a row makes a stale README fail here instead of being quoted."""
    import re
    import statistics
    from itertools import combinations

    from smelib.study.conclusions import PAPER_MIOU
    from smelib.settings import repo_root

    readme = (repo_root() / "README.md").read_text()
    section = readme.split("## What holds of the paper's claims", 1)[1].split("\n## ", 1)[0]
    rows = status.read_summary()
    known = {f"{v:.2f}" for v in PAPER_MIOU.values()}
    for r in rows:
        for key in ("miou_mean", "miou_std"):
            if r.get(key):
                known.add(f"{100 * float(r[key]):.2f}")
    for a, b in combinations([r for r in rows if r.get("miou_mean")], 2):
        known.add(f"{abs(100 * (float(a['miou_mean']) - float(b['miou_mean']))):.2f}")
    # evaluation records (results/headroom): each one's mIoU, and paired differences of one checkpoint's records
    from smelib.study.headroom import tta_pairs
    from smelib.study.results import load_eval_records

    evals = load_eval_records(repo_root() / "results" / "headroom")
    known |= {f"{100 * e['metrics']['miou']:.2f}" for e in evals}
    known |= {f"{abs(100 * (b['metrics']['miou'] - a['metrics']['miou'])):.2f}" for a, b in tta_pairs(evals)}
    # paired-bootstrap records (results/bootstrap): both mIoUs, the difference, the interval's ends, its s.e., and
    # each class's IoU difference
    from smelib.study.bootstrap import load_bootstrap_records

    for rec in load_bootstrap_records(repo_root() / "results" / "bootstrap"):
        o = rec["outcome"]
        known |= {f"{abs(100 * o[k]):.2f}" for k in ("miou_better", "miou_worse", "difference", "low", "high", "std")}
        known |= {f"{abs(100 * v):.2f}" for v in o.get("class_difference") or () if v is not None}
    # decision records (results/mechanisms): the paired rule − argmax differences' mean and std over seeds
    from smelib.study.decisions import decision_spread, load_decision_records, select_decision_records

    seeds = select_decision_records(load_decision_records(repo_root() / "results" / "mechanisms"))
    for by in decision_spread(seeds).values():
        for mean, std, _n in by.values():
            known |= {f"{abs(mean):.2f}"} | ({f"{std:.2f}"} if std is not None else set())
    # seed-paired training options (smelib.study.paired_runs): each metric's paired difference, mean and std over seeds
    from smelib.study.paired_runs import PAIRED_METRICS, paired_curve, seed_pairs
    from smelib.study.results import load_records

    records = load_records(repo_root() / "results" / "runs")
    for option in {r["config"] for r in rows if str(r["config"]).startswith("cpu_budget_")}:
        pairs = seed_pairs(records, option)
        for _label, path in PAIRED_METRICS:
            diffs = [p.difference(path) for p in pairs]
            if diffs:
                known.add(f"{abs(sum(diffs) / len(diffs)):.2f}")
            if len(diffs) > 1:
                known.add(f"{statistics.stdev(diffs):.2f}")
        for diffs in paired_curve(pairs).values():  # the paired validation curve, epoch by epoch
            known.add(f"{abs(statistics.fmean(diffs)):.2f}")
    # the official − grouped gap over models (smelib.study.conclusions.split_gap): its mean, standard error, chi2 and p
    from smelib.study.conclusions import split_gap

    classes = [k[: -len("_mean")] for k in rows[0] if k.startswith("iou_") and k.endswith("_mean")]
    for key in ("miou", "miou_defects", *classes):
        gap = split_gap(rows, key=key)
        known |= {f"{abs(100 * v):.2f}" for v in (gap.mean, gap.se) if v is not None}
        known |= {f"{v:.2f}" for v in (gap.chi2, gap.p_common) if v is not None}
    quoted = re.findall(r"(?<![\d.])(\d+\.\d\d)(?![\d.])", section)
    assert quoted, "the status table quotes no accuracy figure: the pattern no longer matches the README"
    stale = sorted(set(quoted) - known)
    assert not stale, f"README.md status table quotes figures no row of results/summary.csv gives: {stale}"


def test_readme_table_is_the_generated_one_and_short() -> None:
    """The README's status table is exactly :func:`headline_table` (the book's title page shows the same): at most
    ten rows, no cell over 200 characters, and no stale copy (regenerate with ``markdown_table(headline_table())``)."""
    from smelib.settings import repo_root

    table = status.headline_table()
    assert 1 <= len(table.rows) <= 10
    assert max(len(str(cell)) for row in table.rows for cell in row) <= 200
    readme = (repo_root() / "README.md").read_text()
    section = readme.split("## What holds of the paper's claims", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert "\n".join(lines) == status.markdown_table(table)


def test_markdown_table_escapes_pipes() -> None:
    from smelib.study.tables import Table

    assert status.markdown_table(Table(["a", "b"], [["x|y", 1]])).splitlines()[-1] == "| x\\|y | 1 |"
