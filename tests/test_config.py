"""Config tests: defaults, YAML loading, dotted key=value overrides, validation errors, the shipped configs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from smelib.config import (
    DEFAULTS,
    MECHANISM_KEYS,
    ConfigError,
    apply_overrides,
    dump_yaml,
    load_config,
    parse_override,
    parse_value,
    resolve,
)
from smelib.settings import repo_root

CONFIGS = repo_root() / "configs"


def test_defaults_resolve_and_are_not_mutated() -> None:
    before = copy.deepcopy(DEFAULTS)
    cfg = resolve({"optim": {"lr": 0.5}, "model": {"overrides": {"decoder_width": 8}}})
    assert cfg["optim"]["lr"] == 0.5 and cfg["optim"]["name"] == DEFAULTS["optim"]["name"]
    assert cfg["model"]["overrides"] == {"decoder_width": 8} and cfg["name"] == "custom"
    cfg["data"]["batch_size"] = 99
    assert DEFAULTS == before


@pytest.mark.parametrize(
    ("text", "value"),
    [("3e-3", 0.003), ("1.5", 1.5), ("12", 12), ("true", True), ("null", None), ("[256, 320]", [256, 320]),
     ("focal+dice", "focal+dice"), ("{a: 1}", {"a": 1}), ("", "")],
)
def test_parse_value(text: str, value: object) -> None:
    assert parse_value(text) == value
    assert type(parse_value(text)) is type(value)


def test_overrides_with_dotted_keys() -> None:
    assert parse_override("optim.lr=3e-3") == (["optim", "lr"], 0.003)
    cfg = apply_overrides(resolve({}), ["optim.lr=3e-3", "train.amp=bf16", "data.size=[64, 96]",
                                       "model.overrides.decoder_width=32", "model.overrides.dropout=[0, 0]",
                                       ("train.max_steps", 7), "loss={focal: 1.0, dice: 0.5}"])
    cfg = resolve(cfg)
    assert cfg["optim"]["lr"] == 0.003 and cfg["train"]["amp"] == "bf16" and cfg["data"]["size"] == [64, 96]
    assert cfg["model"]["overrides"] == {"decoder_width": 32, "dropout": [0, 0]}
    assert cfg["train"]["max_steps"] == 7 and cfg["loss"] == {"focal": 1.0, "dice": 0.5}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", r"unknown config key 'optim.lrr' \(did you mean 'optim.lr'\?\)"),
        ("trian.epochs=3", r"did you mean 'train'"),
        ("optim.lr", "not of the form key=value"),
        ("=3", "empty key"),
        ("optim..lr=3", "empty key"),
        ("optim.lr=-1", r"optim.lr: must be a number > 0"),
        ("optim.name=adam", "optim.name: must be one of sgd, adamw"),
        ("train.amp=fp32", "train.amp: must be one of auto, none, bf16, fp16"),
        ("train.epochs=0", "train.epochs: must be an integer >= 1"),
        ("train.epochs=1.5", "train.epochs: must be an integer"),
        ("train.deterministic=maybe", "train.deterministic: must be true or false"),
        ("train.device=tpu", "train.device: must be auto, cpu, cuda or cuda:N"),
        ("data.split=random", "data.split: must be one of official, grouped"),
        ("data.size=[1, 2, 3]", "data.size: must be null"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("data.augment={flip: 0.5}", r"data.augment: unknown augmentation option"),
        ("model.name=nope", "model.name: unknown model 'nope'; registered: "),
        ("model.overrides.num_classes=3", "set data.num_classes instead"),
        ("loss=focal+xx", r"loss: unknown loss name\(s\) \['xx'\]"),
        ("optim.betas=[0.9]", "optim.betas: must be two numbers"),
        ("name=a/b", "name: must be a non-empty string without slashes"),
    ],
)
def test_invalid_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_load_yaml_file_name_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("optim:\n  lr: 0.1\ntrain:\n  epochs: 3\n")
    cfg = load_config(path, ["train.seed=4"])
    assert cfg["name"] == "mine" and cfg["optim"]["lr"] == 0.1 and cfg["train"]["seed"] == 4
    path.write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(path)
    path.write_text("optim:\n  momentom: 0.9\n")
    with pytest.raises(ConfigError, match=r"mine.yaml: unknown config key 'optim.momentom' \(did you mean"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_dump_yaml_round_trips(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "cpu_budget.yaml")
    path = tmp_path / "again.yaml"
    path.write_text(dump_yaml(cfg))
    again = load_config(path)
    assert {**again, "name": cfg["name"]} == cfg


def _keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("overrides", "deeplab_overrides", "augment"):
            out |= _keys(v, f"{prefix}{k}.")
        else:
            out.add(prefix + k)
    return out


@pytest.mark.parametrize("name", ["quick", "cpu_budget", "paper"])
def test_shipped_configs_state_every_key(name: str) -> None:
    import yaml

    raw = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    # The off-by-default mechanisms (smelib.mechanisms) may be left out of a shipped config.
    optional = {k for k in _keys(DEFAULTS) if any(k == m or k.startswith(m + ".") for m in MECHANISM_KEYS)}
    missing = _keys(DEFAULTS) - _keys(raw) - optional
    assert not missing, f"configs/{name}.yaml does not state {sorted(missing)}"
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg["name"] == name


def test_paper_config_is_the_papers_protocol() -> None:
    cfg = load_config(CONFIGS / "paper.yaml")
    assert cfg["model"]["name"] == "sme_deeplabv3plus" and cfg["data"]["size"] == 512
    assert cfg["train"]["epochs"] == 300 and cfg["data"]["batch_size"] == 8 and cfg["loss"] == "focal+dice"
    o, s = cfg["optim"], cfg["schedule"]
    assert (o["name"], o["lr"], o["momentum"], o["nesterov"], o["weight_decay"]) == ("sgd", 7e-3, 0.9, True, 1e-4)
    assert s["name"] == "cosine" and s["warmup_epochs"] > 0 and s["min_lr_ratio"] == 0.01
    assert cfg["data"]["augment"]["hflip"] > 0 and cfg["data"]["augment"]["rotate_deg"] > 0


def test_cpu_budget_config() -> None:
    cfg = load_config(CONFIGS / "cpu_budget.yaml")
    assert cfg["data"]["size"] is None and cfg["optim"]["name"] == "adamw" and cfg["optim"]["lr"] == 2e-3
    assert cfg["model"]["deeplab_overrides"] == {"decoder_width": 64, "context_width": 64}
    assert cfg["data"]["augment"]["rot90"] is True and cfg["data"]["batch_size"] in (8, 16)
    assert cfg["loss"] == "focal+dice" and cfg["schedule"]["name"] == "cosine"


def test_quick_config_uses_the_bundled_sample() -> None:
    cfg = load_config(CONFIGS / "quick.yaml")
    assert cfg["model"]["name"] == "sme_deeplabv3plus_lite"
    assert Path(cfg["data"]["root"]).name == "NEU_Seg_sample" and cfg["train"]["epochs"] <= 3
