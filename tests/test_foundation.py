"""The foundation: pinned install lists agree, quick mode is decided in one place, the CLI lists its commands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import smelib
from smelib.cli import main
from smelib.settings import data_root, quick_mode, sample_root

ROOT = Path(__file__).resolve().parent.parent


def _requirements() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def test_requirements_and_environment_yml_agree() -> None:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    env_pins = {}
    for item in pip_section:
        if not item.startswith("-"):
            name, version = item.split("==")
            env_pins[name.lower()] = version
    assert env_pins == _requirements()
    assert "-e ." in pip_section


def test_the_code_passes_the_linter() -> None:
    """pyproject.toml's ruff rules (line length 120, pyflakes, pycodestyle) hold for the package and the tests."""
    pytest.importorskip("ruff", reason="ruff is not installed (it is in requirements.txt)")
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
                          str(ROOT / "smelib"), str(ROOT / "tests")], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_torch_is_pinned_to_the_cpu_build_and_nothing_pulls_torchvision() -> None:
    pins = _requirements()
    assert pins["torch"] == "2.13.0"
    assert not {"torchvision", "timm", "segmentation-models-pytorch"} & set(pins)
    assert re.match(r"1\.", pins["jupyter-book"])


@pytest.mark.parametrize("value,expected", [("1", True), ("true", True), ("0", False), ("", False), ("off", False)])
def test_quick_mode_reads_one_variable(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("SMELIB_QUICK", value)
    assert quick_mode() is expected


def test_quick_mode_rejects_typos(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMELIB_QUICK", "yes please")
    with pytest.raises(ValueError, match="SMELIB_QUICK"):
        quick_mode()


def test_data_root_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SMELIB_QUICK", "1")
    assert data_root() == sample_root()
    assert data_root(tmp_path) == tmp_path
    monkeypatch.setenv("SMELIB_QUICK", "0")
    monkeypatch.setenv("SMELIB_DATA", str(tmp_path / "neu"))
    assert data_root() == tmp_path / "neu"


def test_the_test_session_runs_in_quick_mode() -> None:
    assert quick_mode()


def test_help_lists_the_subcommands() -> None:
    out = subprocess.run([sys.executable, "-m", "smelib", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("info", "models", "flops"):
        assert re.search(rf"^\s+{command}\s", out, re.M), command


def test_models_command_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    assert "sme_deeplabv3plus" in capsys.readouterr().out.split()


def test_version_is_the_packages() -> None:
    from importlib.metadata import version

    assert smelib.__version__ == version("smelib")
