"""Host facts a run record carries (the CPU's speed flags, the share of CPU time a shared VM lost) and a run's
stored test predictions (write_predictions / read_predictions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from smelib import records as R


def test_steal_fraction_is_the_share_of_ticks_stolen_between_two_readings() -> None:
    before = {"total": 1_000, "steal": 100}
    after = {"total": 3_000, "steal": 1_100}
    assert R.steal_fraction(before, after) == pytest.approx(0.5)
    assert R.steal_fraction(before, before) is None  # no time passed: no fraction, not 0/0
    assert R.steal_fraction(None, after) is None and R.steal_fraction(before, None) is None


def test_others_fraction_is_the_machines_busy_share_less_this_process() -> None:
    before = {"total": 1_000, "steal": 0, "busy": 300, "own": 200}
    after = {"total": 3_000, "steal": 0, "busy": 2_300, "own": 1_700}  # 2000 busy ticks, 1500 of them ours
    assert R.others_fraction(before, after) == pytest.approx(0.25)
    alone = {**after, "busy": 1_800}  # every busy tick ours
    assert R.others_fraction(before, alone) == 0.0
    assert R.others_fraction(before, {**alone, "busy": 1_790}) == 0.0  # the counters' rounding, clipped
    assert R.others_fraction(before, before) is None and R.others_fraction(None, after) is None
    assert R.others_fraction({"total": 1_000, "steal": 0}, after) is None  # a reading from before the field


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="no /proc/stat on this OS")
def test_cpu_times_reads_proc_stat_and_grows() -> None:
    first = R.cpu_times()
    assert first is not None and 0 <= first["steal"] <= first["total"]
    sum(i * i for i in range(2_000_000))  # some CPU time, so the counters move
    second = R.cpu_times()
    assert second is not None and second["total"] >= first["total"] and second["steal"] >= first["steal"]
    frac = R.steal_fraction(first, second)
    assert frac is None or 0.0 <= frac <= 1.0
    assert second["own"] > first["own"] and second["busy"] >= first["busy"]  # the loop ran on this process
    others = R.others_fraction(first, second)
    assert others is not None and 0.0 <= others <= 1.0


def test_cpu_times_parses_the_first_line_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  10 2 3 40 5 0 1 7 99 0\ncpu0 5 1 1 20 2 0 0 3 0 0\n")
    real_open = open

    def fake_open(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        return real_open(stat if str(path) == "/proc/stat" else path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    # guest (99) is already counted inside user time, so it is not added to the total again.
    got = R.cpu_times()
    assert got is not None and got.pop("own") >= 0  # this process's own ticks, read elsewhere
    # busy: user, nice, system, irq, softirq (not idle 40, iowait 5 or steal 7)
    assert got == {"total": 10 + 2 + 3 + 40 + 5 + 0 + 1 + 7, "steal": 7, "busy": 10 + 2 + 3 + 0 + 1}


def test_stored_predictions_round_trip_maps_of_any_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    maps = [rng.integers(0, 4, (5, 7), dtype=np.uint8), np.full((3, 2), 255, np.uint8), np.zeros((1, 1), np.uint8)]
    path = R.write_predictions(tmp_path / R.PREDICTIONS_FILE, ["a", "b", "c"], maps)
    ids, back = R.read_predictions(path)
    assert ids == ["a", "b", "c"]
    assert all(np.array_equal(m, b) and b.dtype == np.uint8 for m, b in zip(maps, back))
    with pytest.raises(FileExistsError, match="never overwritten"):
        R.write_predictions(path, ["a"], maps[:1])
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


def test_stored_predictions_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 ids but 1 label maps"):
        R.write_predictions(tmp_path / "x.npz", ["a", "b"], [np.zeros((2, 2))])
    with pytest.raises(ValueError, match="2-D"):
        R.write_predictions(tmp_path / "x.npz", ["a"], [np.zeros((1, 2, 2))])
    with pytest.raises(R.PredictionsError, match="no stored predictions"):
        R.read_predictions(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(R.PredictionsError, match="bad.npz: not a stored-predictions file"):
        R.read_predictions(bad)
    short = tmp_path / "short.npz"
    np.savez_compressed(short, ids=np.asarray(["a"]), shapes=np.asarray([[2, 2]]), masks=np.zeros(3, np.uint8))
    with pytest.raises(R.PredictionsError, match="do not match"):
        R.read_predictions(short)


def test_every_run_is_listed_once_under_its_config() -> None:
    """The appendix "Every run": one row per record, under its config's table, with the marks the page explains."""
    from smelib.study.results import DIRTY_MARK, every_run_tables

    def rec(config: str, model: str, started: str, **extra: object) -> dict:
        return {"config_name": config, "model": model, "split": {"kind": "grouped"}, "seed": 0, "epochs": 6,
                "epochs_done": 6, "final": {"test": {"miou": 0.75}}, "wall_seconds": 600.0,
                "host": {"cpu": "AMD EPYC", "cpu_flags": ["avx2"], "cpu_cores": 2}, "started_utc": started,
                "git": {"dirty": False}, **extra}

    records = [rec("b", "hrnet", "2026-12-02"), rec("a", "pspnet", "2026-12-03", git={"dirty": True}),
               rec("b", "resunet", "2026-12-01", epochs_done=2, cpu_others_fraction=0.5, final={"val": {"miou": 0.5}})]
    tables = every_run_tables(records)
    assert [t.title for t in tables] == ["config a: 1 run", "config b: 2 runs"]
    assert tables[0].rows[0][4] == f"75.00 {DIRTY_MARK}"
    first, second = tables[1].rows
    assert first[:2] == ["resunet", "grouped"] and first[3] == "2/6" and first[4] == "50.00 (val)"
    assert first[5] == "10 *" and second[5] == "10" and second[6] == "EPYC avx2"
