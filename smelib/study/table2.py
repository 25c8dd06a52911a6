"""The paper's Table 2 (its GFLOPs and parameter figures, its row labels) beside our counts of the same rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smelib.study.tables import Table
from smelib.tools.flops import cost_report


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's Table 2 as printed (the paper's numbers) and the configuration that measures it."""

    paper_label: str
    config: str
    paper_gflops: float
    paper_params_m: float


#: The paper's Table 2 (its numbers, its row labels) and our configuration for each row. The labels of the
#: first two rows do not describe what was measured: "StarNet + ASPP" is ASPP followed by MSAA, and
#: "StarNet + ASPP + ELA" is ASPP alone (ELA adds almost nothing that thop can see).
TABLE2: tuple[PaperRow, ...] = (
    PaperRow("StarNet + ASPP", "starnet_aspp_msaa", 74.604, 11.161),
    PaperRow("StarNet + ASPP + ELA", "starnet_aspp_ela", 71.281, 10.753),
    PaperRow("StarNet + MSAA", "starnet_msaa", 56.845, 8.928),
    PaperRow("StarNet + MSAA + ELA", "sme_deeplabv3plus", 56.845, 8.928),
)


def table2(height: int = 512, width: int = 512) -> list[dict[str, Any]]:
    """The paper's Table 2 beside our counts, one dict per row (keys as ``smelib flops --table2 --json``)."""
    rows = []
    for row in TABLE2:
        rep = cost_report(row.config, height, width)
        rows.append({
            "paper_label": row.paper_label,
            "config": row.config,
            "paper_gflops": row.paper_gflops,
            "paper_params_m": row.paper_params_m,
            "gflops_paper_convention": round(rep.gflops_paper_convention, 3),
            "params_m_paper_convention": round(rep.params_m_paper_convention, 3),
            "params_m_true": round(rep.params_m_true, 3),
            "gmacs_fvcore": round(rep.gmacs_fvcore, 3),
        })
    return rows


#: Columns of the displayed Table 2 in order, each a pair (header, key of a :func:`table2` row). The "our"
#: columns are counted in the paper's convention (2 x thop's multiply-adds at 512 x 512, thop's parameters);
#: fvcore's count of each row stays in the rows (``gmacs_fvcore``, ``smelib flops --table2 --json``).
TABLE2_COLUMNS: tuple[tuple[str, str], ...] = (
    ("paper's label", "paper_label"),
    ("our config", "config"),
    ("paper GFLOPs", "paper_gflops"),
    ("our GFLOPs", "gflops_paper_convention"),
    ("paper params (M)", "paper_params_m"),
    ("our params (M)", "params_m_paper_convention"),
    ("true params (M)", "params_m_true"),
)


def table2_display(rows: list[dict[str, Any]]) -> Table:
    """The rows of :func:`table2` as a :class:`~smelib.study.tables.Table`, each cell picked by its key.

    The columns are :data:`TABLE2_COLUMNS`; ``Counting FLOPs`` in the book and ``smelib flops --table2`` show it.
    """
    return Table([h for h, _ in TABLE2_COLUMNS], [[r[k] for _, k in TABLE2_COLUMNS] for r in rows])
