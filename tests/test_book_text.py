"""The chapters as a reader gets them: the results chapters' shape (figures, length, Summary and Exercises), no
progress-report talk in the prose, no machine paths and no warnings in the stored outputs."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

BOOK = Path(__file__).resolve().parent.parent / "book"
CHAPTERS = sorted(BOOK.glob("*.ipynb"))
#: chapter -> the figures it must show at least (the results half leads with evidence)
RESULTS = {"training": 2, "ablations": 3, "qualitative": 2, "unspecified": 2, "headroom": 2, "speed": 2}
MAX_WORDS = 2100  # "at most about 2,000 words of prose"
#: phrases of a progress report, not of a book that states what holds now
PROCESS_TALK = [r"\bpending\b", r"\bnot yet\b", r"\bso far\b", r"\bto be re-?run\b", r"\bas (the )?seeds land\b",
                r"\bnext measurement\b", r"\bstill to (do|run|come)\b", r"\bstood in\b", r"_drafts\b", r"\bTODO\b",
                r"\byet to be\b", r"\bmissing seeds\b", r"\bwill be (measured|run|added)\b"]
MACHINE_PATHS = re.compile(r"(/work/|/home/|/root/|/tmp/|[A-Z]:\\Users)")


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _prose(nb: nbformat.NotebookNode) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def _figures(nb: nbformat.NotebookNode) -> int:
    return sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if {"image/png", "image/svg+xml"} & set(o.get("data", {})))


def _output_text(output: dict) -> str:
    if "text" in output:
        return str(output["text"])
    return "\n".join(str(v) for k, v in output.get("data", {}).items() if k.startswith("text/"))


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_a_results_chapter_leads_with_figures_and_ends_with_summary_and_exercises(name: str) -> None:
    nb = _read(BOOK / f"{name}.ipynb")
    prose = _prose(nb)
    words = len(re.findall(r"[A-Za-z0-9][\w'’-]*", prose))
    assert words <= MAX_WORDS, f"{name}: {words} words of prose"
    assert _figures(nb) >= RESULTS[name], f"{name}: {_figures(nb)} figures"
    headings = re.findall(r"^## (.+)$", prose, re.M)
    assert headings[-2:] == ["Summary", "Exercises"], f"{name} ends with {headings[-2:]}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_no_progress_report_talk_in_the_prose(path: Path) -> None:
    prose = _prose(_read(path))
    found = [m.group(0) for pattern in PROCESS_TALK for m in re.finditer(pattern, prose, re.I)]
    assert not found, f"{path.name}: {found}"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_stored_outputs_show_no_machine_path_and_no_warning(path: Path) -> None:
    problems = []
    for i, cell in enumerate(_read(path).cells):
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            text = _output_text(output)
            if MACHINE_PATHS.search(text):
                problems.append(f"cell {i}: a machine path: {MACHINE_PATHS.search(text).group(0)}")
            if output.get("name") == "stderr" or re.search(r"\w+Warning:", text):
                problems.append(f"cell {i}: a stored warning or stderr: {text[:80]!r}")
    assert not problems, f"{path.name}: {problems}"


def test_the_checks_can_fail() -> None:
    """Each pattern catches what it is for (and the word check spares words that merely contain one)."""
    assert re.search(PROCESS_TALK[0], "the grouped run is pending", re.I)
    assert not any(re.search(p, "appending a coordinate; spending two hours", re.I) for p in PROCESS_TALK)
    assert MACHINE_PATHS.search("data root: /work/shared/data/NEU_Seg")
    assert MACHINE_PATHS.search("data root: C:\\Users\\me\\NEU_Seg")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("## Summary\n\n## Exercises")])
    assert _figures(nb) == 0
