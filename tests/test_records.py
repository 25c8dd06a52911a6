"""Host facts a run record carries: the CPU's speed flags and the share of CPU time a shared VM lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from smelib import records as R


def test_steal_fraction_is_the_share_of_ticks_stolen_between_two_readings() -> None:
    before = {"total": 1_000, "steal": 100}
    after = {"total": 3_000, "steal": 1_100}
    assert R.steal_fraction(before, after) == pytest.approx(0.5)
    assert R.steal_fraction(before, before) is None  # no time passed: no fraction, not 0/0
    assert R.steal_fraction(None, after) is None and R.steal_fraction(before, None) is None


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="no /proc/stat on this OS")
def test_cpu_times_reads_proc_stat_and_grows() -> None:
    first = R.cpu_times()
    assert first is not None and 0 <= first["steal"] <= first["total"]
    sum(i * i for i in range(2_000_000))  # some CPU time, so the counters move
    second = R.cpu_times()
    assert second is not None and second["total"] >= first["total"] and second["steal"] >= first["steal"]
    frac = R.steal_fraction(first, second)
    assert frac is None or 0.0 <= frac <= 1.0


def test_cpu_times_parses_the_first_line_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  10 2 3 40 5 0 1 7 99 0\ncpu0 5 1 1 20 2 0 0 3 0 0\n")
    real_open = open

    def fake_open(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        return real_open(stat if str(path) == "/proc/stat" else path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    # guest (99) is already counted inside user time, so it is not added to the total again.
    assert R.cpu_times() == {"total": 10 + 2 + 3 + 40 + 5 + 0 + 1 + 7, "steal": 7}
