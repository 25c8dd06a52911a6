"""Decision records (smelib.study.decisions.decision_record, `smelib decisions`): one trained run's test subset under
the argmax, static and dynamic rules, written as a committed record and summarised over seeds for the book."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from engine_helpers import train_tiny_runs

from smelib.cli import main
from smelib.study.decisions import (
    DecisionRecordError,
    decision_differences,
    decision_effect_rows,
    decision_record,
    decision_seed_table,
    decision_spread,
    decision_spread_table,
    load_decision_records,
    select_decision_records,
    write_decision_record,
)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return train_tiny_runs(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def records(two_runs: list[Path]) -> list[dict]:
    return [decision_record(run) for run in two_runs]


def test_argmax_equals_the_run_records_test_metrics(two_runs: list[Path], records: list[dict]) -> None:
    for run_dir, rec in zip(two_runs, records):
        run = json.loads((run_dir / "record.json").read_text())
        assert rec["run_id"] == run["run_id"] and rec["seed"] == run["seed"] and rec["model"] == run["model"]
        assert rec["epochs"] == run["epochs"]
        assert rec["metrics"]["argmax"]["miou"] == pytest.approx(run["final"]["test"]["miou"], abs=1e-9)
        assert rec["metrics"]["argmax"]["confusion"] == run["final"]["test"]["confusion"]
        assert rec["cross_check"]["comparable"] and rec["cross_check"]["agree"]
        assert rec["checkpoint"]["sha256"] == run["checkpoint"]["sha256"] and rec["checkpoint"]["matches_run_record"]
        assert rec["checkpoint"]["relpath"] == run["checkpoint"]["relpath"]
        assert rec["split"]["test"] == rec["images"] == 4 and rec["subset"] == "test"
        assert set(rec["rules"]) == {"argmax", "static", "dynamic"} and rec["rules"]["dynamic"]["mode"] == "dynamic"
        assert rec["train_stats_source"] == "checkpoint"
        assert set(rec["tau_counts"]) == {"static", "dynamic"}
        assert sum(c for _, c in rec["tau_counts"]["dynamic"]) == 4
        assert rec["tau_counts"]["static"] == [[0.5, 4]]
        assert rec["git"]["commit"] and rec["host"]["device"] == "cpu" and rec["wall_seconds"] > 0


def test_round_trip_refuses_overwrite_and_summarises_seeds(records: list[dict], tmp_path: Path) -> None:
    paths = [write_decision_record(rec, tmp_path) for rec in records]
    assert [p.name for p in paths] == [f"decisions_{rec['run_id']}.json" for rec in records]
    back = load_decision_records(tmp_path)
    assert sorted(r["run_id"] for r in back) == sorted(r["run_id"] for r in records)
    assert json.loads(json.dumps(records[0])) == next(r for r in back if r["run_id"] == records[0]["run_id"])
    with pytest.raises(DecisionRecordError, match="exists; pass force=True"):
        write_decision_record(records[0], tmp_path)
    write_decision_record(records[0], tmp_path, force=True)

    chosen = select_decision_records(back, model=records[0]["model"], split=records[0]["split"]["kind"], config=None)
    assert [r["seed"] for r in chosen] == [0, 1]
    assert select_decision_records(back) == []  # other model, split and config
    diffs = decision_differences(chosen[0])
    m = chosen[0]["metrics"]
    assert diffs["dynamic"]["mIoU"] == pytest.approx(100 * (m["dynamic"]["miou"] - m["argmax"]["miou"]))
    spread = decision_spread(chosen)
    mean, std, n = spread["static"]["precision"]
    values = [decision_differences(r)["static"]["precision"] for r in chosen]
    assert n == 2 and mean == pytest.approx(sum(values) / 2)
    assert std == pytest.approx(abs(values[0] - values[1]) / math.sqrt(2))
    assert decision_spread(chosen[:1])["dynamic"]["mIoU"][1] is None
    assert len(decision_seed_table(chosen).rows) == 4 and len(decision_spread_table(chosen).rows) == 2


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    assert load_decision_records(tmp_path / "none") == []
    (tmp_path / "decisions_x.json").write_text("{not json")
    with pytest.raises(DecisionRecordError, match="decisions_x.json: not valid JSON"):
        load_decision_records(tmp_path)
    (tmp_path / "decisions_x.json").write_text('{"kind": "other"}')
    with pytest.raises(DecisionRecordError, match="decisions_x.json: not a decision record"):
        load_decision_records(tmp_path)


def test_cli_writes_the_record_and_reports_errors(two_runs: list[Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mech"
    assert main(["decisions", str(two_runs[0]), "--out", str(out)]) == 0
    run_id = json.loads((two_runs[0] / "record.json").read_text())["run_id"]
    assert (out / f"decisions_{run_id}.json").is_file()
    assert "agrees" in capsys.readouterr().out
    assert main(["decisions", str(two_runs[0]), "--out", str(out)]) == 2  # refuses before computing
    assert f"decisions_{run_id}.json exists; add --force" in capsys.readouterr().err
    bad = tmp_path / "not_a_run"
    bad.mkdir()
    assert main(["decisions", str(bad), "--out", str(out)]) == 2
    assert f"{bad}: not a run folder (no record.json)" in capsys.readouterr().err
    (bad / "record.json").write_text("{}")
    assert main(["decisions", str(bad), "--out", str(out)]) == 2
    assert "checkpoint missing" in capsys.readouterr().err
    with pytest.raises(DecisionRecordError, match="rules must be distinct"):
        decision_record(two_runs[0], rules=("argmax", "median"))


def test_select_keeps_only_the_protocol_epochs() -> None:
    # a record of another training length is never pooled with the protocol's seeds; records from before the
    # ``epochs`` field fall back to their checkpoint's epochs_trained
    from smelib.study.plan import protocol_epochs

    e = protocol_epochs("cpu_budget")
    base = {"model": "sme_deeplabv3plus", "split": {"kind": "grouped"}, "config_name": "cpu_budget"}
    recs = [dict(base, run_id="a", seed=0, epochs=e), dict(base, run_id="b", seed=1, epochs=e + 3),
            dict(base, run_id="c", seed=2, checkpoint={"epochs_trained": e + 1}),
            dict(base, run_id="d", seed=3, checkpoint={"epochs_trained": e})]
    assert [r["run_id"] for r in select_decision_records(recs)] == ["a", "d"]
    assert [r["run_id"] for r in select_decision_records(recs, config=None)] == ["a", "b", "c", "d"]


def test_effect_rows_and_the_one_checkpoint_figure() -> None:
    import matplotlib.pyplot as plt

    from smelib.metrics import ConfusionMatrix
    from smelib.study.decisions import DecisionOutcome, plot_decision_outcomes
    from smelib.study.paired_runs import effect_summary

    def metrics(miou: float) -> dict:
        return {"miou": miou, "precision": miou + 0.1, "mpa": miou - 0.1, "defects_only": {"miou": miou - 0.05}}

    recs = [{"seed": s, "run_id": f"r{s}", "metrics": {"argmax": metrics(m), "dynamic": metrics(m - 0.003)}}
            for s, m in ((0, 0.760), (1, 0.765), (2, 0.770))]
    rows = decision_effect_rows(recs)
    assert len(rows) == 3 * 4 and {r["mechanism"] for r in rows} == {"dynamic threshold"}
    assert all(r["delta"] == pytest.approx(-0.3) for r in rows)
    assert [r["base"] for r in rows if r["metric"] == "mIoU"] == pytest.approx([76.0, 76.5, 77.0])
    # -0.3 in every seed, above the argmax runs' own spread of 0.5 points? no: within it
    assert effect_summary(rows)[0]["verdict"] == "within the seed spread"
    assert decision_effect_rows(recs, names={})[0]["mechanism"] == "dynamic"

    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    good = cm.compute()
    outcomes = {"argmax": DecisionOutcome("argmax", {"mode": "argmax"}, good, [math.nan] * 3),
                "dynamic": DecisionOutcome("dynamic", {"mode": "dynamic"}, good, [0.3, 0.5, 0.5])}
    fig = plot_decision_outcomes(outcomes)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0.3", "0.5"]
    assert [round(p.get_height()) for p in fig.axes[0].patches] == [1, 2]
    plt.close("all")
    with pytest.raises(DecisionRecordError, match="outcomes need"):
        plot_decision_outcomes({"argmax": outcomes["argmax"]})
