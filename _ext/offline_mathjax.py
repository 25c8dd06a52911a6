"""Keep the bundled MathJax out of every page's <script> list.

Jupyter Book 1.x adds every ``.js`` file under ``_static`` to every page. MathJax 3 is a loader that fetches its
own components on demand, so only ``mathjax_path`` (``mathjax/tex-chtml.js``) may be loaded by the page; the
other files of the bundle must stay files on disk.
"""

from sphinx.application import Sphinx
from sphinx.config import Config


def _drop_bundled_mathjax(app: Sphinx, config: Config) -> None:
    def name(entry: object) -> str:
        return entry if isinstance(entry, str) else entry[0]  # type: ignore[index]

    config.html_js_files = [f for f in config.html_js_files if not name(f).startswith("mathjax/")]


def setup(app: Sphinx) -> dict[str, bool]:
    app.connect("config-inited", _drop_bundled_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
