"""Write the API reference pages (one per module) and the reference part of ``_toc.yml``.

Run from the repository root after adding or removing a module: ``python book/api/make_pages.py``.
``tests/test_api_docs.py`` checks that the pages and the table of contents match the package.
"""

from __future__ import annotations

import pkgutil
import re
from pathlib import Path

import smelib

ROOT = Path(__file__).resolve().parents[2]
API = ROOT / "book" / "api"
LAYERS = (
    ("core", "What a user of the library imports: models, data, losses, metrics, training, inference, checkpoints, "
             "config."),
    ("tools", "Beside the core: the CLI's product commands, benchmarks, inference optimisation, export, FLOP "
              "counting, releases."),
    ("study", "What exists for this book's reproduction of the paper, importing the core and the tools."),
)


def modules() -> list[str]:
    """Every module of the package, sorted, packages included."""
    names = ["smelib"] + [m.name for m in pkgutil.walk_packages(smelib.__path__, "smelib.")]
    return sorted(n for n in names if not n.split(".")[-1].startswith("_"))


def layer(name: str) -> str:
    if name.startswith("smelib.study"):
        return "study"
    if name.startswith("smelib.tools") or name == "smelib.cli":
        return "tools"
    return "core"


def is_package(name: str) -> bool:
    return (ROOT / Path(*name.split("."))).is_dir()


def page(name: str) -> str:
    # Packages show their docstring only: their names are documented where they are defined.
    options = "" if is_package(name) else "   :members:\n   :undoc-members:\n"
    # a plain-text title wraps in the sidebar, where a long code-formatted module name would be cut off
    return f"# {name}\n\n```{{eval-rst}}\n.. automodule:: {name}\n{options}```\n"


def slug(name: str) -> str:
    return name.replace(".", "_")


def main() -> None:
    for old in API.glob("smelib*.md"):
        old.unlink()
    toc = ["  - caption: API reference", "    chapters:", "    - file: book/api/index", "      sections:"]
    index = ["# API reference", "", "One page per module, generated from the docstrings; the layers are those that "
             "`lint-imports` enforces (`CONTRIBUTING.md`).", ""]
    for key, text in LAYERS:
        index += [f"## The {key}", "", text, ""]
        for name in (n for n in modules() if layer(n) == key):
            (API / f"{slug(name)}.md").write_text(page(name), encoding="utf-8")
            toc.append(f"      - file: book/api/{slug(name)}")
            index.append(f"- [`{name}`]({slug(name)}.md)")
        index.append("")
    (API / "index.md").write_text("\n".join(index), encoding="utf-8")
    toc_file = ROOT / "_toc.yml"
    text = toc_file.read_text(encoding="utf-8")
    text = re.sub(r"\n  - caption: API reference\n(    .*\n?)*", "\n", text).rstrip("\n") + "\n"
    toc_file.write_text(text + "\n".join(toc) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
