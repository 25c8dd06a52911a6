"""Per-epoch run histories for the Training chapter's learning curves (smelib.study.results)."""

from __future__ import annotations

import pytest

from smelib.study.results import epoch_histories, plot_epoch_histories


def _rec(model: str, split: str, seed: int, finished: str = "2026-01-01", epochs: int = 2, config: str = "cpu_budget",
         val=(0.5, 0.6), status: str = "completed") -> dict:
    return {"status": status, "config_name": config, "model": model, "split": {"kind": split}, "seed": seed,
            "epochs": epochs, "finished_utc": finished,
            "history": [{"epoch": i + 1, "seconds": 30.0, "val_miou": v, "train_loss": 1.0 / (i + 1)}
                        for i, v in enumerate(val)]}


def test_epoch_histories_keep_the_latest_run_per_seed_of_the_asked_protocol() -> None:
    recs = [_rec("b", "official", 0), _rec("a", "grouped", 1), _rec("a", "official", 0, val=(0.1, 0.2)),
            _rec("a", "official", 0, finished="2026-02-01"),  # the same seed again: the latest counts
            _rec("a", "official", 2, epochs=3, val=(0.1, 0.2, 0.3)),  # another length
            _rec("a", "official", 3, config="other"), _rec("a", "leaky", 0), _rec("a", "official", 4, status="failed"),
            _rec("c", "official", 0)]  # not an asked model
    rows = epoch_histories(recs, ["a", "b"], epochs=2)
    assert [(r["model"], r["split"], r["seed"], r["epoch"]) for r in rows] == [
        ("a", "official", 0, 1), ("a", "official", 0, 2), ("a", "grouped", 1, 1), ("a", "grouped", 1, 2),
        ("b", "official", 0, 1), ("b", "official", 0, 2)]
    assert rows[1]["val_miou"] == pytest.approx(60.0) and rows[1]["minutes"] == pytest.approx(1.0)
    assert len(epoch_histories(recs, ["a"])) == 7  # every length when none is asked
    skipped = _rec("a", "official", 0, val=(None, 0.7), finished="2026-03-01")  # an epoch without validation
    assert [(r["epoch"], r["minutes"]) for r in epoch_histories([skipped], ["a"])] == [(2, pytest.approx(1.0))]


def test_plot_epoch_histories_draws_a_panel_per_model_and_a_line_per_seed() -> None:
    import matplotlib

    matplotlib.use("Agg")
    recs = [_rec("a", "official", 0), _rec("a", "official", 1), _rec("a", "grouped", 0), _rec("b", "official", 0)]
    fig = plot_epoch_histories(epoch_histories(recs, ["a", "b"]), ncols=3)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["a", "b"]
    assert len(visible[0].get_lines()) == 3 and len(visible[1].get_lines()) == 1
    assert [t.get_text() for t in fig.legends[0].get_texts()][:2] == ["official split", "grouped split"]
    # the book's one colour per split, whatever order the splits come in
    from matplotlib.colors import to_rgb

    from smelib.study.data_figures import SPLIT_COLORS

    grouped_first = plot_epoch_histories(epoch_histories([_rec("a", "grouped", 0), _rec("a", "official", 0)],
                                                         ["a"], splits=("grouped", "official")))
    colours = {to_rgb(line.get_color()) for line in grouped_first.axes[0].get_lines()}
    assert colours == {SPLIT_COLORS["official"], SPLIT_COLORS["grouped"]}
    assert to_rgb(grouped_first.axes[0].get_lines()[0].get_color()) == pytest.approx(SPLIT_COLORS["grouped"])
    with pytest.raises(ValueError, match="no run history"):
        plot_epoch_histories([])
