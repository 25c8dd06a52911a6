"""smelib.study.plan: the missing-runs list from summary rows, and several decision rules scored in one pass."""

from __future__ import annotations

import dataclasses
import json
import math
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from smelib.study import plan as X
from smelib.study import conclusions as XC
from smelib.study import decisions as XD
from smelib.study import results as R
from smelib.inference import evaluate
from smelib.mechanisms import DecisionRule


def _row(model: str, split: str, seeds: str, config: str = "cpu_budget",
         epochs: int | None = None) -> dict[str, object]:
    return {"config": config, "model": model, "split": split, "seeds": seeds, "n_seeds": len(seeds.split()),
            "epochs": epochs}


def test_only_runs_at_the_protocol_epochs_count() -> None:
    # A learning-curve run (`--epochs N` under the same config name) is not a row of the protocol's tables.
    e = X.protocol_epochs("cpu_budget")
    assert isinstance(e, int) and e >= 1 and X.protocol_epochs("no_such_config") is None
    rows = [_row("sme_deeplabv3plus", "grouped", "0", epochs=e),
            _row("sme_deeplabv3plus", "grouped", "0 1 2", epochs=e + 5)]
    assert X.pick_row(rows, "sme_deeplabv3plus", "grouped")["seeds"] == "0"  # type: ignore[index]
    sme = [m.seed for m in X.missing_runs(rows) if m.model == "sme_deeplabv3plus" and m.split == "grouped"]
    assert sme == [1, 2]
    assert X.pick_row([_row("m", "grouped", "0 1", epochs=e + 1)], "m", "grouped") is None


def test_pick_row_at_an_earlier_budget() -> None:
    # epochs=N reads another budget's rows (the first protocol's 3 epochs) and never a row without an epochs field
    e = X.protocol_epochs("cpu_budget")
    rows = [_row("m", "grouped", "0", epochs=e), _row("m", "grouped", "0 1 2", epochs=e + 3),
            _row("m", "grouped", "4 5 6 7"), _row("m", "grouped", "3", config="other", epochs=e + 3)]
    assert X.pick_row(rows, "m", "grouped", epochs=e + 3)["seeds"] == "0 1 2"  # type: ignore[index]
    assert X.pick_row(rows, "m", "grouped", epochs=e)["seeds"] == "0"  # type: ignore[index]
    assert X.pick_row(rows, "m", "grouped", epochs=e + 1) is None
    assert X.pick_row(rows, "m", "official", epochs=e + 3) is None


def test_missing_option_runs_pair_the_base_seeds_and_carry_the_overrides() -> None:
    e = X.protocol_epochs("cpu_budget")
    rows = [_row("sme_deeplabv3plus", "grouped", "0 2", config="cpu_budget_prior", epochs=e),
            _row("sme_deeplabv3plus", "grouped", "1", config="cpu_budget_prior", epochs=e + 2),  # other length
            _row("sme_deeplabv3plus", "official", "1", config="cpu_budget_prior", epochs=e)]      # other split
    todo = X.missing_option_runs(rows)
    assert [(m.overrides[0], m.seed) for m in todo] == [
        ("name=cpu_budget_prior", 1), ("name=cpu_budget_cw", 0), ("name=cpu_budget_cw", 1), ("name=cpu_budget_cw", 2)]
    assert todo[0].command == ("smelib train --config configs/cpu_budget.yaml --model sme_deeplabv3plus --split "
                               "grouped --seed 1 name=cpu_budget_prior model_init.classifier_prior=true")
    # the command trains what the rows will be read as: the override names the option's protocol
    from smelib.cli import build_parser

    args = build_parser().parse_args(todo[1].command.split()[1:])
    assert args.overrides == ["name=cpu_budget_cw", "model_init.class_weights=inverse_sqrt"]


def test_missing_runs_with_no_records_is_the_whole_plan() -> None:
    todo = X.missing_runs([])
    assert len(todo) == 3 * 3 + 6 + 9
    assert {(m.model, m.seed) for m in todo if m.split == "grouped" and m.model == "sme_deeplabv3plus"} == {
        ("sme_deeplabv3plus", 0), ("sme_deeplabv3plus", 1), ("sme_deeplabv3plus", 2)}
    assert todo[0].command == ("smelib train --config configs/cpu_budget.yaml --model sme_deeplabv3plus "
                               "--split grouped --seed 0")


def test_missing_runs_subtracts_measured_seeds_and_ignores_other_configs_and_models() -> None:
    rows = [
        _row("sme_deeplabv3plus", "grouped", "0 2"),
        _row("sme_deeplabv3plus", "grouped", "0 1 2", config="cpu_budget_prior"),  # ablation variant: not counted
        _row("sme_deeplabv3plus_lite", "official", "0"),  # not in the plan
        _row("pspnet", "official", "3", config="paper"),  # any seed satisfies ">= 1"
    ]
    todo = X.missing_runs(rows)
    sme = [m for m in todo if m.model == "sme_deeplabv3plus" and m.split == "grouped"]
    assert [(m.seed, m.have, m.need, m.config) for m in sme] == [(1, 2, 3, "cpu_budget")]
    assert not [m for m in todo if m.model == "pspnet" and m.split == "official"]
    assert len(todo) == 3 * 3 + 6 + 9 - 2 - 1


def test_missing_runs_custom_plan_and_seed_parsing() -> None:
    plan = [X.RunRequirement("a", "grouped", 3)]
    assert [m.seed for m in X.missing_runs([_row("a", "grouped", "1")], plan)] == [0, 2]
    assert X.seeds_of({"seeds": ""}) == [] and X.seeds_of({"seeds": [0, 1]}) == [0, 1] and X.seeds_of({}) == []
    with pytest.raises(ValueError):
        X.missing_runs([], plan, configs=())


def test_pick_row_prefers_more_seeds_then_config_order() -> None:
    rows = [_row("m", "grouped", "0", config="paper"), _row("m", "grouped", "0 1"), _row("m", "official", "0"),
            _row("m", "grouped", "0 1 2", config="cpu_budget_prior")]
    assert X.pick_row(rows, "m", "grouped")["config"] == "cpu_budget"  # type: ignore[index]
    assert X.pick_row(rows[:1] + [_row("m", "grouped", "5")], "m", "grouped")["config"] == "cpu_budget"  # type: ignore[index]
    assert X.pick_row(rows, "m", "official")["seeds"] == "0"  # type: ignore[index]
    assert X.pick_row(rows, "x", "grouped") is None


def test_tau_counts() -> None:
    assert XD.tau_counts([0.5, float("nan"), 0.3, 0.5000001, 0.7]) == {0.3: 1, 0.5: 2, 0.7: 1}


class _Tiny(nn.Module):
    num_classes = 4

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        with torch.no_grad():
            self.conv.bias.copy_(torch.tensor([1.5, 0.0, 0.2, -0.2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _dataset() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    items = []
    for i in range(7):
        h = 12 if i < 5 else 10  # two sizes: batches never mix them
        img = torch.randn(3, h, h, generator=g) * (0.5 + i)
        mask = torch.randint(0, 4, (h, h), generator=g)
        mask[: h // 2] = 0
        items.append((img, mask))
    return items


def test_evaluate_decisions_equals_evaluate_per_rule() -> None:
    model, data = _Tiny(), _dataset()
    rules = {
        "argmax": None,
        "static": DecisionRule(mode="static"),
        "dynamic": DecisionRule(mode="dynamic", small=0.2, large=0.6),
        "dynamic batch": DecisionRule(mode="dynamic", small=0.2, large=0.6, scope="batch"),
    }
    out = XD.evaluate_decisions(model, data, rules, batch_size=3)
    assert list(out) == list(rules)
    for name, rule in rules.items():
        ref = evaluate(model, data, batch_size=3, decision=rule)
        assert torch.equal(out[name].metrics.confusion, ref.confusion), name
        assert len(out[name].taus) == len(data)
    assert all(math.isnan(t) for t in out["argmax"].taus) and out["argmax"].rule == {"mode": "argmax"}
    assert out["static"].taus == [0.5] * len(data)
    assert set(XD.tau_counts(out["dynamic"].taus)) <= {0.3, 0.5, 0.7}
    assert out["dynamic"].rule["small"] == 0.2


def test_summary_value_and_mean_std_text() -> None:
    row = {"miou_mean": "0.7533", "miou_std": "", "precision_mean": 0.5, "mpa_std": "0.01"}
    assert XC.summary_value(row, "miou_mean") == pytest.approx(0.7533)
    assert XC.summary_value(row, "miou_std") is None and XC.summary_value(None, "miou_mean") is None
    assert XC.mean_std_text(row) == "75.33 ± –"
    assert XC.mean_std_text({"miou_mean": 0.7, "miou_std": 0.0123}) == "70.00 ± 1.23"
    assert XC.mean_std_text(row, "mpa") == "not yet measured"
    assert XC.mean_std_text(None) == "not yet measured"


def test_summary_table_rows() -> None:
    rows = [
        {"config": "cpu_budget", "model": "sme_deeplabv3plus", "split": "grouped", "n_seeds": "2", "seeds": "0 1",
         "miou_mean": "0.74", "miou_std": "0.01", "miou_defects_mean": "0.6719", "miou_defects_std": "",
         "precision_mean": "0.8348", "mpa_mean": "0.8471"},
    ]
    t = XC.summary_table(rows)
    assert t.columns[6] == "mIoU %" and len(t.rows) == 1
    assert t.rows[0] == ["cpu_budget", "sme_deeplabv3plus", "grouped", "–", 2, "0 1", "74.00 ± 1.00", "67.19 ± –",
                         "83.48", "84.71", "–", "–"]
    rows[0].update(train_minutes="26.5", hosts="AMD EPYC [isa unknown] x2 | Intel(R) Xeon(R) Processor [avx512] x2")
    assert XC.summary_table(rows).rows[0][-2:] == ["26", "AMD ?, Intel avx512"]
    assert XC.short_hosts("unknown") == "?" and XC.short_hosts("") == "–"
    assert XC.summary_table([]).rows == []


def test_conclusion_verdicts_use_the_standard_error() -> None:
    from smelib.study.conclusions import conclusion_verdict, conclusions_table

    def row(model: str, mean: float, std: str, n: int) -> dict:
        return {"model": model, "split": "grouped", "config": "cpu_budget", "n_seeds": str(n),
                "seeds": " ".join(map(str, range(n))), "miou_mean": str(mean), "miou_std": std}

    # difference 2 points, standard error sqrt(0.01^2/3 + 0.01^2/3) = 0.816 points: t = 2.45 > 2
    assert conclusion_verdict(row("a", 0.76, "0.01", 3), row("b", 0.74, "0.01", 3)) == (pytest.approx(2.0), "holds")
    assert conclusion_verdict(row("a", 0.74, "0.01", 3), row("b", 0.76, "0.01", 3))[1] == "reversed"
    assert conclusion_verdict(row("a", 0.75, "0.01", 3), row("b", 0.745, "0.01", 3))[1] == "within the seed spread"
    # one seed against three: the single run borrows the 3-seed spread, se = 1 * sqrt(1/1 + 1/3) = 1.155 points
    one_vs_three = "(seeds: 1 vs 3; the single run assumed to scatter like the 3)"
    assert conclusion_verdict(row("a", 0.75, "", 1), row("b", 0.72, "0.01", 3)) == (
        pytest.approx(3.0), f"holds {one_vs_three}")  # t = 2.6
    assert conclusion_verdict(row("a", 0.74, "", 1), row("b", 0.72, "0.01", 3))[1] == (
        f"within the seed spread {one_vs_three}")  # t = 1.73: the 2 points that hold at 3 vs 3 seeds do not here
    assert conclusion_verdict(row("b", 0.72, "0.01", 3), row("a", 0.75, "", 1))[1] == (
        "reversed (seeds: 3 vs 1; the single run assumed to scatter like the 3)")
    assert conclusion_verdict(row("a", 0.75, "", 1), row("b", 0.70, "", 1))[1] == "no spread yet (seeds: 1 vs 1)"
    assert conclusion_verdict(None, row("b", 0.70, "0.01", 3)) == (None, "not yet measured")
    rows = [row("sme_deeplabv3plus", 0.76, "0.01", 3), row("deeplabv3plus_mobilenetv2", 0.74, "0.01", 3)]
    text = str(conclusions_table(rows))
    assert "StarNet beats MobileNetV2" in text and "+2.00" in text and "holds" in text
    assert "-0.25 points (one run each, official split)" in text  # the paper's own MSAA - ASPP (88.52 - 88.77)
    assert text.count("not yet measured") >= 4  # the rows without records say so
    other = X.protocol_epochs("cpu_budget") + 3  # a length that is never the protocol's
    elsewhere = [dict(r, epochs=str(other)) for r in rows]
    assert "+2.00" not in str(conclusions_table(elsewhere))
    t_other = str(conclusions_table(elsewhere, epochs=other))
    assert "+2.00" in t_other and f"{other}-epoch runs" in t_other


def test_single_runs_on_both_sides_are_read_against_the_pooled_seed_spread() -> None:
    from smelib.study.conclusions import conclusion_verdict, conclusions_table, pooled_seed_std

    def row(model: str, mean: float, std: str, n: int, split: str = "grouped") -> dict:
        return {"model": model, "split": split, "config": "cpu_budget", "n_seeds": str(n),
                "seeds": " ".join(map(str, range(n))), "miou_mean": str(mean), "miou_std": std}

    rows = [row("sme_deeplabv3plus", 0.76, "0.01", 3), row("deeplabv3plus_mobilenetv2", 0.74, "0.02", 3),
            row("starnet_msaa", 0.75, "", 1), row("starnet_aspp", 0.70, "", 1), row("starnet_aspp_ela", 0.72, "", 1),
            row("hrnet", 0.5, "0.3", 3, split="official")]  # another split's spread is not pooled in
    # (2 * 0.01^2 + 2 * 0.02^2) / 4 = 2.5e-4
    std, dof = pooled_seed_std(rows, "grouped")
    assert std == pytest.approx(2.5e-4 ** 0.5) and dof == 4
    assert pooled_seed_std(rows[2:5], "grouped") == (None, 0)  # single runs only: nothing to pool
    words = "(seeds: 1 vs 1; both runs assumed to scatter like the pooled multi-seed rows, s = 1.58 points, " \
            "4 degrees of freedom)"
    # se = 1.58 * sqrt(2) = 2.24 points: 5 points hold (t = 2.24), 3 points do not (t = 1.34)
    assert conclusion_verdict(rows[2], rows[3], pooled=(std, dof)) == (pytest.approx(5.0), f"holds {words}")
    assert conclusion_verdict(rows[4], rows[3], pooled=(std, dof))[1] == f"within the seed spread {words}"
    assert conclusion_verdict(rows[3], rows[2], pooled=(std, dof))[1] == f"reversed {words}"  # t = -2.24
    assert conclusion_verdict(rows[2], rows[3], pooled=(None, 0))[1] == "no spread yet (seeds: 1 vs 1)"
    # pooled_for_all: a multi-seed row's own spread is replaced by the pool too, se = s * sqrt(1/n1 + 1/n2)
    # 3 seeds at std 1 point vs 1 run, 2.5 points apart: against the row's own spread se = 1.15 (t = 2.17, holds),
    # against the pool se = 1.58 * sqrt(1/3 + 1) = 1.83 (t = 1.37, within)
    close = row("starnet_msaa", 0.735, "", 1)
    assert conclusion_verdict(rows[0], close, pooled=(std, dof))[1].startswith("holds (seeds: 3 vs 1;")
    assert conclusion_verdict(rows[0], close, pooled=(std, dof), pooled_for_all=True)[1] == (
        "within the seed spread (seeds: 3 vs 1; both rows assumed to scatter like the pooled multi-seed rows, "
        "s = 1.58 points, 4 degrees of freedom)")
    # a side with seeds keeps its own spread; the pool is only for 1 vs 1
    assert "the single run assumed to scatter like the 3" in conclusion_verdict(rows[2], rows[1], pooled=(std, dof))[1]
    text = str(conclusions_table(rows))
    assert "MSAA helps" in text and "+5.00" in text and "pooled multi-seed rows, s = 1.58 points" in text

    # The official split has single runs only: they borrow the grouped split's pooled spread when asked to, and say so.
    official = [{**r, "split": "official"} for r in rows[2:5]]
    both = rows[:5] + official  # (without the official hrnet row, whose seeds would give that split a spread)
    assert "no spread yet (seeds: 1 vs 1)" in str(conclusions_table(both, "official"))
    borrowed = str(conclusions_table(both, "official", spread_split="grouped"))
    assert "+5.00" in borrowed and "pooled multi-seed rows of the grouped split, s = 1.58 points" in borrowed


def test_resolution_table_sets_the_papers_differences_against_the_pooled_spread() -> None:
    from smelib.study.conclusions import PAPER_MIOU, resolution_table

    def row(model: str, std: str, n: int) -> dict:
        return {"model": model, "split": "grouped", "config": "cpu_budget", "n_seeds": str(n),
                "seeds": " ".join(map(str, range(n))), "miou_mean": "0.75", "miou_std": std}

    t = resolution_table([row("sme_deeplabv3plus", "0.0025", 3), row("starnet_aspp", "", 1)])
    # smallest resolvable: 2 * 0.25 * sqrt(2) = 0.71 points; MSAA - ASPP in the paper: 88.52 - 88.77 = -0.25
    msaa = next(r for r in t.rows if r[0].startswith("MSAA helps"))
    assert msaa == [msaa[0], "-0.25", "0.71", f"{0.25 / (2 * 0.25 * 2 ** 0.5):.2f}"]
    assert len(t.rows) == sum(1 for c in XC.CONCLUSIONS if c.better in PAPER_MIOU and c.worse in PAPER_MIOU) == 4
    assert "s = 0.25 points, 2 degrees of freedom" in t.title
    with pytest.raises(ValueError, match="no grouped-split summary row has 2"):
        resolution_table([row("starnet_aspp", "", 1)])


def _est(e: X.TimeEstimate | None) -> tuple[float, str, bool | None] | None:
    return None if e is None else (e.minutes, e.run_id, e.same_host)


def test_time_estimate_scales_the_latest_completed_run() -> None:
    recs = [{"model": "m", "status": "completed", "wall_seconds": 600.0, "epochs_done": 2, "run_id": "old",
             "finished_utc": "2026-01-01T00:00:00Z"},
            {"model": "m", "status": "completed", "wall_seconds": 1200.0, "epochs_done": 3, "run_id": "new",
             "finished_utc": "2026-02-01T00:00:00Z"},
            {"model": "m", "status": "running", "wall_seconds": 1.0, "epochs_done": 1, "run_id": "unfinished",
             "finished_utc": "2026-03-01T00:00:00Z"}]
    assert _est(X.time_estimate(recs, "m", 6)) == (pytest.approx(40.0), "new", None)  # 1200 s * 6 / 3 epochs
    assert X.time_estimate(recs, "other", 6) is None
    # On a host like the old record's, that record is the one to scale, though a newer one ran elsewhere.
    fast = {"cpu": "Xeon", "cpu_flags": ["avx2", "avx512f"], "cpu_cores": 2}
    slow = {"cpu": "EPYC", "cpu_flags": ["avx2"], "cpu_cores": 2}
    recs[0]["host"], recs[1]["host"] = fast, slow
    assert _est(X.time_estimate(recs, "m", 6, host=fast)) == (pytest.approx(30.0), "old", True)  # 600 s * 6 / 2
    assert _est(X.time_estimate(recs, "m", 6, host=slow)) == (pytest.approx(40.0), "new", True)
    other = {"cpu": "Xeon", "cpu_flags": ["avx2"], "cpu_cores": 2}  # same name, narrower vectors: not alike
    est = X.time_estimate(recs, "m", 6, host=other)
    assert _est(est) == (pytest.approx(40.0), "new", False)
    assert est is not None and est.host_factor is None  # no model was timed on both machines


def test_time_estimate_carries_a_speed_factor_measured_on_other_models() -> None:
    def rec(model: str, host: dict[str, object], minutes_per_epoch: float, day: int) -> dict[str, object]:
        return {"model": model, "status": "completed", "wall_seconds": minutes_per_epoch * 60 * 6, "epochs_done": 6,
                "run_id": f"{model}-{day}", "finished_utc": f"2026-01-{day:02d}T00:00:00Z", "host": host}

    fast = {"cpu": "Xeon", "cpu_flags": ["avx2", "avx512f"], "cpu_cores": 2}
    slow = {"cpu": "EPYC", "cpu_flags": ["avx2"], "cpu_cores": 2}
    # "a" takes 1.5x as long on the slow machine (median over its two slow runs), "b" 2x: the factor is their median
    recs = [rec("a", fast, 4.0, 1), rec("a", slow, 5.0, 2), rec("a", slow, 7.0, 3),
            rec("b", fast, 2.0, 4), rec("b", slow, 4.0, 5),
            rec("big", fast, 20.0, 6)]
    assert X.host_speed_factor(recs, "EPYC [avx2] x2", "Xeon [avx512] x2") == (pytest.approx(1.75), ("a", "b"))
    assert X.host_speed_factor(recs, "Xeon [avx512] x2", "EPYC [avx2] x2")[0] == pytest.approx((2 / 3 + 1 / 2) / 2)
    est = X.time_estimate(recs, "big", 6, host=slow)
    assert est is not None and not est.same_host and est.run_id == "big-6"
    assert est.minutes == pytest.approx(20.0 * 6 * 1.75) and est.host_factor == pytest.approx(1.75)
    assert est.factor_models == ("a", "b")
    # a record from this very machine is used as it is
    est = X.time_estimate(recs, "a", 6, host=slow)
    assert est is not None and est.same_host and est.host_factor is None and est.minutes == pytest.approx(42.0)


def test_a_run_resumed_on_another_kind_of_machine_times_nothing() -> None:
    fast = {"cpu": "Xeon", "cpu_flags": ["avx2", "avx512f"], "cpu_cores": 2}
    slow = {"cpu": "EPYC", "cpu_flags": ["avx2"], "cpu_cores": 2}
    one = {"model": "m", "status": "completed", "wall_seconds": 600.0, "epochs_done": 6, "run_id": "one",
           "finished_utc": "2026-01-01T00:00:00Z", "host": slow,
           "segments": [{"host": slow, "steps_start": 0, "steps_end": 10}, {"host": slow, "steps_start": 10}]}
    mixed = {**one, "run_id": "mixed", "wall_seconds": 60.0, "finished_utc": "2026-02-01T00:00:00Z",
             "segments": [{"host": fast, "steps_start": 0, "steps_end": 10}, {"host": slow, "steps_start": 10}]}
    assert R.timed_on_one_host(one) and not R.timed_on_one_host(mixed)
    assert R.timed_on_one_host({"host": slow})  # records from before segments
    # the newer record would be scaled were it not resumed across machines
    assert _est(X.time_estimate([one, mixed], "m", 6, host=slow)) == (pytest.approx(10.0), "one", True)
    assert X.time_estimate([mixed], "m", 6) is None
    assert X.host_speed_factor([mixed, {**one, "host": fast, "segments": []}], "EPYC [avx2] x2",
                               "Xeon [avx512] x2") is None


def test_a_run_with_other_work_beside_it_times_nothing_while_one_trained_alone() -> None:
    epyc = {"cpu": "EPYC", "cpu_flags": ["avx2"], "cpu_cores": 2}
    xeon = {"cpu": "Xeon", "cpu_flags": ["avx2", "avx512f"], "cpu_cores": 2}
    alone = {"model": "m", "status": "completed", "wall_seconds": 600.0, "epochs_done": 6, "run_id": "alone",
             "finished_utc": "2026-01-01T00:00:00Z", "host": epyc, "cpu_others_fraction": 0.02}
    # newer, but a test suite ran beside it for one of its two training processes
    busy = {**alone, "run_id": "busy", "wall_seconds": 900.0, "finished_utc": "2026-02-01T00:00:00Z",
            "cpu_others_fraction": 0.05, "segments": [{"host": epyc, "cpu_others_fraction": 0.4}, {"host": epyc}]}
    assert R.timed_alone(alone) and not R.timed_alone(busy) and R.timed_alone({"host": epyc})  # older: unknown
    assert not R.timed_alone({**alone, "cpu_others_fraction": R.CONTENDED + 0.01})
    assert _est(X.time_estimate([alone, busy], "m", 6, host=epyc)) == (pytest.approx(10.0), "alone", True)
    assert _est(X.time_estimate([busy], "m", 6, host=epyc)) == (pytest.approx(15.0), "busy", True)  # all there is
    # the speed factor between two machines reads only runs that had their machine to themselves
    fast = {**alone, "host": xeon, "wall_seconds": 300.0, "run_id": "fast"}
    assert X.host_speed_factor([alone, fast], "EPYC [avx2] x2", "Xeon [avx512] x2")[0] == pytest.approx(2.0)
    assert X.host_speed_factor([busy, fast], "EPYC [avx2] x2", "Xeon [avx512] x2") is None


def _curve_record(epochs: int, miou: float, run_id: str, seed: int = 0, config: str = "cpu_budget",
                  status: str = "completed") -> dict[str, object]:
    return {"run_id": run_id, "status": status, "model": "sme_deeplabv3plus", "config_name": config,
            "split": {"kind": "grouped"}, "seed": seed, "epochs": epochs, "wall_seconds": 300.0 * epochs,
            "images_per_s": 10.0, "host": {"channels_last": True},
            "final": {"val": {"miou": miou + 0.01}, "test": {"miou": miou, "defects_only": {"miou": miou - 0.07}}}}


def test_learning_curve_one_point_per_epoch_count() -> None:
    recs = [_curve_record(6, 0.76, "b"), _curve_record(3, 0.74, "a"), _curve_record(3, 0.745, "c"),
            _curve_record(9, 0.9, "d", seed=1), _curve_record(9, 0.9, "e", config="cpu_budget_prior"),
            _curve_record(12, 0.9, "f", status="running")]
    curve = XC.learning_curve(recs)
    assert [(p["epochs"], p["test_miou"], p["run_id"]) for p in curve] == [(3, 0.745, "c"), (6, 0.76, "b")]
    assert curve[1]["minutes"] == pytest.approx(30.0) and curve[1]["val_miou"] == pytest.approx(0.77)
    assert curve[0]["channels_last"] is True and curve[0]["test_miou_defects"] == pytest.approx(0.675)


def test_budget_table_compares_each_length_on_its_own_runs() -> None:
    def row(model: str, epochs: int, mean: float, seeds: str, std: str = "") -> dict:
        return {"config": "cpu_budget", "model": model, "split": "grouped", "epochs": str(epochs), "seeds": seeds,
                "n_seeds": str(len(seeds.split())), "miou_mean": str(mean), "miou_std": std}

    rows = [row("a", 3, 0.70, "0 1 2", "0.01"), row("a", 6, 0.75, "0"), row("b", 3, 0.72, "0"),
            row("a", 6, 0.99, "0", "").copy() | {"split": "official"}]
    t = XC.budget_table(rows, (3, 6), models=("a", "b", "c"))
    assert [r[0] for r in t.rows] == ["a", "b"]  # c has no run at either length
    assert t.rows[0] == ["a", "70.00 ± 1.00", 3, "75.00 ± –", 1, "+5.00"]
    assert t.rows[1] == ["b", "72.00 ± –", 1, "not yet measured", "–", "–"]
    with pytest.raises(ValueError, match="at least 2"):
        XC.budget_table(rows, (3,))


def test_split_gap_means_the_models_gaps_and_checks_them_against_seed_noise() -> None:
    def row(model: str, split: str, seeds: str, miou: float, std: float | None = None,
            config: str = "cpu_budget") -> dict[str, object]:
        return {**_row(model, split, seeds, config), "miou_mean": miou, "miou_std": std}

    grouped = [row("a", "grouped", "0 1 2", 0.760, 0.005), row("b", "grouped", "0 1 2", 0.780, 0.005),
               row("c", "grouped", "0", 0.700)]
    # a and b gain 1.2 and 1.6 points; c's official row is of another protocol, so it is no pair
    official = [row("a", "official", "0", 0.772), row("b", "official", "0", 0.796),
                row("c", "official", "0", 0.800, config="paper")]
    g = XC.split_gap(grouped + official)
    assert [(m, round(100 * d, 2), no, ng) for m, d, no, ng in g.pairs] == [("a", 1.2, 1, 3), ("b", 1.6, 1, 3)]
    assert g.mean == pytest.approx(0.014) and g.se == pytest.approx(0.002)  # std of (1.2, 1.6) = 0.28; / sqrt 2
    assert g.seed_std == pytest.approx(0.005) and g.dof == 1
    # each gap scatters with variance s²(1 + 1/3); both lie 0.2 points from their mean: chi2 = 2 · 0.2² / (0.5² · 4/3)
    assert g.chi2 == pytest.approx(0.24)
    assert g.p_common == pytest.approx(math.erfc(math.sqrt(g.chi2 / 2)))  # chi-squared, 1 dof: P(|Z| > sqrt(chi2))
    # a gap far beyond seed noise: the check says the models' gaps differ
    official[1]["miou_mean"] = 0.830
    g = XC.split_gap(grouped + official)
    assert g.p_common is not None and g.p_common < 1e-3
    # another metric: its means pair the same way; without a std column there is no seed noise to check against
    for r, v in zip(grouped + official, (0.50, 0.60, 0.40, 0.52, 0.59, 0.45)):
        r["iou_x_mean"] = v
    g = XC.split_gap(grouped + official, key="iou_x")
    assert g.mean == pytest.approx((0.02 - 0.01) / 2) and g.seed_std is None and g.chi2 is None and g.dof == 1
    # one pair: a mean, but no scatter to read
    g = XC.split_gap([grouped[0], official[0]])
    assert g.mean == pytest.approx(0.012) and g.se is None and g.chi2 is None and g.p_common is None and g.dof == 0


def _stopped_run(runs: Path, name: str, status: str = "running", checkpoint: bool = True, seed: int = 0,
                 segments: list[dict[str, object]] | None = None) -> Path:
    run = runs / name
    (run / "checkpoints").mkdir(parents=True)
    rec = {"run_id": name, "status": status, "config_name": "cpu_budget", "model": "sme_deeplabv3plus",
           "split": {"kind": "grouped"}, "seed": seed, "epochs": 6, "steps_per_epoch": 100, "steps_done": 150,
           "config": {"train": {"max_steps": None}}, "run_dir": f"/elsewhere/{name}", "segments": segments or []}
    (run / "record.json").write_text(json.dumps(rec))
    if checkpoint:
        (run / "checkpoints" / "last.pt").write_bytes(b"state")
    return run


def test_a_stopped_run_is_resumed_not_started_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from smelib.cli import main

    runs = tmp_path / "runs"
    stopped = _stopped_run(runs, "a_stopped")
    lost = _stopped_run(runs, "b_no_checkpoint", checkpoint=False, seed=1)  # killed before its first checkpoint
    _stopped_run(runs, "c_diverged", status="diverged", seed=2)
    [found] = X.resumable_runs(runs)
    # the folder it sits in, not the one it was written in; no segments (an older record): liveness unknown
    assert found.run_dir == stopped and found.live is None
    assert (found.steps_done, found.steps_total, found.fraction_left) == (150, 600, pytest.approx(0.75))
    assert found.command == f"smelib train --out {stopped} --resume"
    [gone] = X.abandoned_runs(runs)  # nothing to resume from, not training: left behind, not resumable
    assert gone.run_dir == lost and (gone.seed, gone.steps_done, gone.steps_total) == (1, 150, 600)
    want = X.MissingRun("sme_deeplabv3plus", "grouped", 0, "cpu_budget", 0, 3)
    assert found.matches(want) and not found.matches(dataclasses.replace(want, seed=1))
    assert not found.matches(dataclasses.replace(want, split="official"))
    assert not found.matches(dataclasses.replace(want, overrides=("name=cpu_budget_prior",)))  # another protocol

    assert main(["results", "--runs", str(runs), "--missing"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    fresh = "smelib train --config configs/cpu_budget.yaml --model sme_deeplabv3plus --split grouped --seed {}"
    assert lines.count(found.command) == 1 and fresh.format(0) not in lines
    assert fresh.format(1) in lines  # nothing to resume: started afresh, and the stale record is named
    assert "seed 1: b_no_checkpoint stopped at step 150 of 600 with no checkpoint to resume from" in err
    assert fresh.format(0) + " name=cpu_budget_prior model_init.classifier_prior=true" in lines  # another protocol
    assert "grouped sme_deeplabv3plus seed 0: resumes a_stopped at step 150 of 600 (an older record" in err


def test_a_run_training_now_is_neither_resumed_nor_queued(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from smelib.cli import main

    # a stand-in for the training process: its command line names smelib train, as a real one does
    proc = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(120)", "smelib",
                             "train"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"  # exec'd: /proc shows its command line
        live = {"pid": proc.pid, "host": {"hostname": socket.gethostname()}}
        _stopped_run(tmp_path, "live", segments=[live], checkpoint=False)  # before its first checkpoint
        _stopped_run(tmp_path, "elsewhere", seed=1, segments=[{**live, "host": {"hostname": "another-machine"}}])
        other, live_run = X.resumable_runs(tmp_path)  # sorted by run id
        assert live_run.live is True and other.live is False
        assert main(["results", "--runs", str(tmp_path), "--missing"]) == 0
        out, err = capsys.readouterr()
        fresh = "smelib train --config configs/cpu_budget.yaml --model sme_deeplabv3plus --split grouped --seed 0"
        assert f"--out {tmp_path / 'live'} " not in out and fresh not in out.splitlines()
        assert f"smelib train --out {tmp_path / 'elsewhere'} --resume" in out.splitlines()
        assert "grouped sme_deeplabv3plus seed 0: training now in" in err
    finally:
        proc.kill()
        proc.wait()
    # the process ended before its first checkpoint: nothing to resume; once it has one, it can be resumed
    assert [r.run_dir.name for r in X.resumable_runs(tmp_path)] == ["elsewhere"]
    assert [r.run_dir.name for r in X.abandoned_runs(tmp_path)] == ["live"]
    (tmp_path / "live" / "checkpoints" / "last.pt").write_bytes(b"state")
    [_, again] = X.resumable_runs(tmp_path)
    assert again.run_dir.name == "live" and again.live is False
