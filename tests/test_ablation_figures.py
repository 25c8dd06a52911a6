"""The ablation chapter's numbers and figures: conclusion intervals, the seeds behind a summary row, and the
figures drawn from them (smelib.study.conclusions, smelib.study.ablation_figures)."""

from __future__ import annotations

import warnings

import pytest

from smelib.study.conclusions import CONCLUSIONS, conclusion_effects, conclusion_verdict, seed_scores

pytest.importorskip("seaborn")


def _row(model: str, mean: float, std: str, n: int, split: str = "grouped", **extra: str) -> dict:
    return {"model": model, "split": split, "config": "cpu_budget", "n_seeds": str(n),
            "seeds": " ".join(map(str, range(n))), "miou_mean": str(mean), "miou_std": std, **extra}


ROWS = [_row("sme_deeplabv3plus", 0.76, "0.01", 3), _row("deeplabv3plus_mobilenetv2", 0.74, "0.01", 3),
        _row("starnet_msaa", 0.75, "", 1), _row("starnet_aspp", 0.70, "", 1)]


def test_effects_carry_the_verdicts_interval() -> None:
    effects = {e.conclusion.claim: e for e in conclusion_effects(ROWS, "grouped")}
    assert len(effects) == len(CONCLUSIONS)
    first = effects[CONCLUSIONS[0].claim]  # SME vs MobileNetV2: 2 points, se = 0.816
    assert first.difference == pytest.approx(2.0) and first.se == pytest.approx(100 * (2 * 0.01**2 / 3) ** 0.5)
    assert first.low == pytest.approx(2.0 - 2 * first.se) and first.high == pytest.approx(2.0 + 2 * first.se)
    assert first.verdict == "holds" and first.assumption == ""
    assert conclusion_verdict(ROWS[0], ROWS[1])[1] == first.verdict
    msaa = effects[CONCLUSIONS[2].claim]  # single runs both sides: the pooled spread (1 point, 4 dof)
    assert msaa.se == pytest.approx(2 ** 0.5) and msaa.verdict == "holds" and "pooled" in msaa.assumption
    assert msaa.n_better == msaa.n_worse == 1
    missing = effects[CONCLUSIONS[6].claim]  # HRNet has no row
    assert missing.difference is None and missing.low is None and missing.verdict == "not yet measured"
    assert conclusion_effects(ROWS, "grouped", z=3.0)[0].verdict == "within the seed spread"  # t = 2.45 < 3


def _record(model: str, seed: int, miou: float, split: str = "grouped") -> dict:
    return {"run_id": f"{model}_{split}_s{seed}", "model": model, "seed": seed, "final": {"test": {"miou": miou}}}


def test_seed_scores_read_the_runs_the_picked_row_averages() -> None:
    records = [_record("sme_deeplabv3plus", s, 0.75 + 0.01 * s) for s in range(3)]
    records.append(_record("sme_deeplabv3plus", 9, 0.10))  # a run no summary row names
    rows = [_row("sme_deeplabv3plus", 0.76, "0.01", 3, run_ids=" ".join(r["run_id"] for r in records[:3]))]
    got = seed_scores(rows, records, models=["sme_deeplabv3plus", "hrnet"])
    assert [(g["seed"], g["value"]) for g in got] == [(0, pytest.approx(75.0)), (1, pytest.approx(76.0)),
                                                      (2, pytest.approx(77.0))]
    assert {g["split"] for g in got} == {"grouped"}


def _boot(better: str, worse: str, split: str, low: float, high: float) -> dict:
    d = (low + high) / 2
    return {"split": {"kind": split}, "runs": [{"model": better, "label": f"{better}_s1"},
                                               {"model": worse, "label": f"{worse}_s1"}],
            "class_names": ["background", "inclusion"],
            "outcome": {"low": low, "high": high, "difference": d, "class_difference": [d, 2 * d],
                        "class_low_joint": [low, 2 * low], "class_high_joint": [high, 2 * high]}}


def test_figures_draw_what_the_records_hold() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from smelib.study import ablation_figures as F

    boot = [_boot("sme_deeplabv3plus", "deeplabv3plus_mobilenetv2", "grouped", 0.001, 0.03),
            _boot("hrnet", "hrnet", "grouped", -0.01, 0.01)]  # two seeds of one model: no conclusion
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = F.conclusion_forest({"grouped": conclusion_effects(ROWS, "grouped")}, boot)
        ax = fig.axes[0]
        thin = [line for line in ax.lines if line.get_linewidth() == pytest.approx(1.1)]
        assert len(thin) == 1 and list(thin[0].get_xdata()) == pytest.approx([0.1, 3.0])  # points
        assert [t.get_text() for t in ax.get_yticklabels()][:2] == ["StarNet beats MobileNetV2",
                                                                   "StarNet beats Xception"]
        plt.close(fig)
        fig = F.class_difference_figure(boot)
        assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["DLV3+ MobileNetV2"]
        plt.close(fig)
    with pytest.raises(ValueError, match="no paired-bootstrap record"):
        F.class_difference_figure(boot[1:])
    assert F.short_claim(CONCLUSIONS[2].claim) == "MSAA helps"


def test_split_gap_figure_plots_one_dot_per_model() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from smelib.study import ablation_figures as F

    rows = [_row(m, 0.75 + d, "0.01", 2, split=s, iou_inclusion_mean=str(0.5 + d), iou_inclusion_std="0.01")
            for m in ("sme_deeplabv3plus", "hrnet", "pspnet") for s, d in (("grouped", 0.0), ("official", 0.02))]
    fig = F.split_gap_figure(rows)
    ax = fig.axes[0]
    dots = [c for c in ax.collections if len(c.get_offsets()) == 3]
    assert len(dots) == 2  # mIoU and inclusion, three models each
    assert sorted(x for x, _ in dots[0].get_offsets()) == pytest.approx([2.0, 2.0, 2.0])
    plt.close(fig)


def test_verdict_table_states_each_split_in_a_word() -> None:
    from smelib.study.conclusions import verdict_table

    table = verdict_table({"grouped": conclusion_effects(ROWS, "grouped"),
                           "official": conclusion_effects(ROWS, "official")})
    assert table.columns == ["the paper's conclusion", "paper", "ours, grouped", "ours, official"]
    rows = {r[0]: r[1:] for r in table.rows}
    assert rows["StarNet beats MobileNetV2"] == ["–", "+2.00 holds", "–"]  # no official rows at all
    assert rows["MSAA helps"][0] == "-0.25"  # the paper's 88.52 - 88.77
    assert rows["MSAA helps"][1] == "+5.00 holds"
    assert rows["SME beats HRNet"][1] == "–"
