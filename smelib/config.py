"""Training configurations: YAML files, ``key=value`` overrides, defaults and validation.

A configuration is a plain nested ``dict`` (JSON- and YAML-ready, stored verbatim in checkpoints and run records).
:func:`load_config` reads a YAML file, lays it over :data:`smelib.config.DEFAULTS`, applies ``key=value`` overrides
with dotted
keys (``optim.lr=3e-3``, ``model.overrides.decoder_width=64``, ``train.amp=bf16``) and validates the result;
:func:`resolve` does the same for a dict built in Python. Every error is a :class:`~smelib.errors.ConfigError` naming
the key.

Keys (the defaults are in :data:`smelib.config.DEFAULTS`; ``null`` means "decided at run time" where stated)::

    name: str                      # the run's config name (default: the YAML file's stem, else "custom")
    model:
      name: str                    # a name from smelib.models.names(), e.g. sme_deeplabv3plus_lite
      overrides: {key: value}      # constructor keyword arguments of that model, e.g. {backbone: starnet_s2}
      deeplab_overrides: {…}       # constructor arguments applied only when the model is a DeepLabV3Plus (the
                                   # CPU budget's width rule {decoder_width: 64, context_width: 64}); model.overrides
                                   # win where both set a key
      in_channels: int             # image channels the model takes (3: NEU-Seg's JPEGs are stored as RGB)
      init: str | null             # start from these weights (a checkpoint path or a release name) instead of
                                   # a random initialisation: fine-tuning; the model and class count must match
    data:
      root: str | null             # dataset folder; null: smelib.settings.data_root() (sample in quick mode)
      split: official | grouped | leaky  # NEU-Seg's own train/test split, the near-duplicate-aware one, or that
                                   # one with the official leak put back (smelib.data.splits.make_split)
      seed: int                    # seed of the split (the validation carve-out), kept fixed across training seeds
      groups: str | null           # duplicate-groups JSON, grouped/leaky splits (`smelib data groups`); null: detect
      val_fraction: float          # part of the training images held out for validation, in [0, 1)
      size: null | int | [h, w]    # training/inference resolution; null = native (NEU-Seg: 200 x 200, no resize)
      augment: {…} | null          # smelib.data.augment.Augment.from_config: hflip, vflip (probabilities), rot90
      (bool),
                                   # rotate_deg, scale [lo, hi], crop; applied after normalisation; null = none
      batch_size: int              # GLOBAL training batch (split evenly over processes under torchrun)
      eval_batch_size: int         # batch of validation/test inference (per process)
      workers: int                 # DataLoader worker processes per training process (0 = in the main process)
      num_classes: int | null      # classes including background; null: the dataset's (NEU-Seg: 4)
      ignore_index: int            # mask value that is not a class (not counted by losses or metrics)
      limit: int | null            # use only the first N images of each subset (tests, smoke runs)
    optim:
      name: sgd | adamw
      lr: float                    # peak learning rate (after warm-up)
      weight_decay: float
      momentum: float              # SGD only
      nesterov: bool               # SGD only
      betas: [float, float]        # AdamW only
      eps: float                   # AdamW only
    schedule:                      # evaluated every optimiser step
      name: cosine | poly | constant
      warmup_epochs: float         # linear warm-up length in epochs (fractions allowed), 0 = none
      warmup_start_ratio: float    # lr at step 0 = lr * this
      min_lr_ratio: float          # final lr = lr * this (cosine and poly)
      power: float                 # poly exponent
    loss: str | {…}                # a spec for smelib.losses.build_loss, e.g. "focal+dice"
    train:
      epochs: int
      max_steps: int | null        # stop after this many optimiser steps in all (smoke runs, throughput); the
                                   # schedule is compressed proportionally into them
      val_every: int               # validate every N epochs (and always after the last one); 0 = never
      amp: auto | none | bf16 | fp16   # autocast dtype; auto = bf16 on CUDA capability >= 8.0, fp16 (with a
                                   # GradScaler) on older GPUs, none on CPU; bf16 on an older GPU becomes fp16.
                                   # A resumed run keeps its checkpoint's precision (smelib.runtime.choose_precision)
      channels_last: auto | bool   # auto = on (NHWC: faster on CUDA and on CPU)
      grad_clip: float | null      # max global gradient norm; null = no clipping
      ema: float | null            # decay of an exponential moving average of the weights, validated, saved and
                                   # evaluated as the model (e.g. 0.999); null = none
      progressive: {size: int | [h, w], epochs: int} | null   # progressive resizing: the first `epochs`
                                   # epochs train at `size` (images bilinear with antialiasing, masks nearest),
                                   # the rest at data.size; validation and test always at data.size
      distill: {teacher: str, temperature: float, weight: float} | null   # knowledge distillation: loss +=
                                   # weight * T^2 * KL(teacher || student) at temperature T on the training
                                   # batches; teacher: a checkpoint of the same classes and normalisation
      checkpoint_every_steps: int  # also write the resumable "last" checkpoint every N steps (0 = epoch ends only)
      seed: int                    # seeds python, numpy, torch, the data order and the augmentation
      deterministic: bool          # torch.use_deterministic_algorithms(True, warn_only=True) and no cuDNN autotune;
                                   # exact on CPU only: on CUDA, adaptive pooling and bilinear upsampling have no
                                   # deterministic backward, so GPU runs still vary (and run slower); false on GPU
      device: auto | cpu | cuda | cuda:N   # under torchrun: auto or cuda (each process takes cuda:LOCAL_RANK)
      threads: int | null          # torch.set_num_threads; null leaves torch's default
      sync_bn: auto | bool         # SyncBatchNorm under DDP (auto: on CUDA; torch has no CPU SyncBatchNorm)
      freeze_bn: bool              # BatchNorm layers stay in eval mode while training (running statistics)
      test_at_end: bool            # evaluate the best checkpoint on the test subset after training
      save_predictions: bool       # also store that checkpoint's argmax test predictions in the run folder
                                   # (predictions_test.npz, ~0.4 MB for NEU-Seg): figures without checkpoints
    model_init:                    # dataset-adaptive initialisation (smelib.mechanisms; off by default)
      classifier_prior: bool       # classifier bias = log of the training split's class pixel frequencies
      class_weights: none | inverse_sqrt   # loss class weights w_k ∝ freq_k^(-1/2), pixel-weighted mean 1
    eval:
      tta: bool                    # average softmax over the 8 dihedral transforms
      split: test | val            # what the test metrics of a run and `smelib eval` measure by default
      decision: argmax | static | dynamic  # how the run's final metrics (and `smelib eval`) turn probabilities
                                   # into labels (smelib.mechanisms); the per-epoch validation that picks the
                                   # best checkpoint always uses argmax
      threshold:                   # static/dynamic: defect where 1 - p(background) > tau
        tau0: float                # in (0, 1): the static tau, and the dynamic rule's base
        slope: float               # >= 0: dynamic tau = clamp(tau0 + slope * (large share - small share))
        min: float                 # bounds of the dynamic tau, 0 <= min <= max <= 1
        max: float
        scope: image | batch       # the dynamic rule measures defect sizes per image or per inference batch

The keys of :data:`MECHANISM_KEYS` (``model_init``, ``eval.decision``, ``eval.threshold``) are the paper's
unspecified mechanisms, all off by default; a shipped config need not state them.

Overrides: ``apply_overrides(cfg, ["optim.lr=3e-3", "data.size=[256,256]"])``. Values are parsed as YAML
(``true``, ``null``, lists, dicts), plus plain Python float syntax (``3e-3``, which YAML 1.1 reads as a
string). Unknown keys are errors, with a suggestion; the free-form sub-dicts (``model.overrides``,
``data.augment``, and ``loss`` given as a dict) accept any key and are checked by the code that consumes them.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from smelib.errors import ConfigError

__all__ = [
    "CLASS_WEIGHT_SCHEMES",
    "DECISIONS",
    "DEFAULTS",
    "MECHANISM_KEYS",
    "apply_overrides",
    "deep_merge",
    "load_config",
    "parse_override",
    "SCOPES",
    "resolve",
    "dump_yaml",
]


#: Values of ``eval.decision`` (and ``smelib eval --threshold``); the rules are in :mod:`smelib.mechanisms`.
DECISIONS: tuple[str, ...] = ("argmax", "static", "dynamic")

#: Values of ``eval.threshold.scope``: over which images the dynamic rule measures defect sizes.
SCOPES: tuple[str, ...] = ("image", "batch")

#: Values of ``model_init.class_weights``.
CLASS_WEIGHT_SCHEMES: tuple[str, ...] = ("none", "inverse_sqrt")


# Keys whose value is a free-form mapping (or spec) checked by its consumer, not by this module.
_FREE_FORM = {("model", "overrides"), ("model", "deeplab_overrides"), ("data", "augment"), ("loss",)}

#: The default configuration, every key a config may set with its default (the module docstring says what each
#: key means). A config file or dict is laid over it by :func:`resolve`.
DEFAULTS: dict[str, Any] = {
    "name": None,
    "model": {"name": "sme_deeplabv3plus_lite", "overrides": {}, "deeplab_overrides": {}, "in_channels": 3,
              "init": None},
    "data": {
        "root": None,
        "split": "official",
        "seed": 0,
        "groups": None,
        "val_fraction": 0.1,
        "size": None,
        "augment": None,
        "batch_size": 8,
        "eval_batch_size": 8,
        "workers": 0,
        "num_classes": None,
        "ignore_index": 255,
        "limit": None,
    },
    "optim": {
        "name": "adamw",
        "lr": 2e-3,
        "weight_decay": 1e-4,
        "momentum": 0.9,
        "nesterov": True,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
    },
    "schedule": {"name": "cosine", "warmup_epochs": 1.0, "warmup_start_ratio": 0.1, "min_lr_ratio": 0.01,
                 "power": 0.9},
    "loss": "focal+dice",
    "train": {
        "epochs": 12,
        "max_steps": None,
        "val_every": 1,
        "amp": "auto",
        "channels_last": "auto",
        "grad_clip": None,
        "ema": None,
        "progressive": None,
        "distill": None,
        "checkpoint_every_steps": 50,
        "seed": 0,
        "deterministic": True,
        "device": "auto",
        "threads": None,
        "sync_bn": "auto",
        "freeze_bn": False,
        "test_at_end": True,
        "save_predictions": False,
    },
    "model_init": {"classifier_prior": False, "class_weights": "none"},
    "eval": {"tta": False, "split": "test", "decision": "argmax",
             "threshold": {"tau0": 0.5, "slope": 0.2, "min": 0.05, "max": 0.95, "scope": "image"}},
}

#: Dotted keys of the off-by-default mechanisms (smelib.mechanisms) that a config file may leave out.
MECHANISM_KEYS = ("model_init", "eval.decision", "eval.threshold")

_SPLITS = ("official", "grouped", "leaky")
_OPTIMS = ("sgd", "adamw")
_SCHEDULES = ("cosine", "poly", "constant")
_AMP = ("auto", "none", "bf16", "fp16")


# ---------------------------------------------------------------------------------------------------------------
# Merging and overrides
# ---------------------------------------------------------------------------------------------------------------


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any], path: tuple[str, ...] = ()) -> dict[str, Any]:
    """A new dict: ``base`` with ``update`` laid over it, recursively; unknown keys are a
    :class:`~smelib.errors.ConfigError`.

    Free-form sub-dicts (``model.overrides``, ``data.augment``, ``loss``) are replaced or merged without key
    checks.
    """
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        key = str(key)
        here = (*path, key)
        if any(here[: len(f)] == f for f in _FREE_FORM):
            # Free-form: a loss spec or a non-mapping replaces; a mapping is merged one level deep.
            if here == ("loss",) or not (isinstance(value, Mapping) and isinstance(out.get(key), Mapping)):
                out[key] = copy.deepcopy(value)
            else:
                out[key] = {**out[key], **copy.deepcopy(dict(value))}
            continue
        if key not in out:
            raise ConfigError(_unknown_key_message(here, list(out)))
        if isinstance(value, Mapping) and isinstance(out[key], Mapping):
            out[key] = deep_merge(out[key], value, here)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _unknown_key_message(path: tuple[str, ...], valid: list[str]) -> str:
    dotted = ".".join(path)
    close = difflib.get_close_matches(path[-1], valid, n=1)
    hint = f" (did you mean {'.'.join((*path[:-1], close[0]))!r}?)" if close else ""
    where = ".".join(path[:-1]) or "the top level"
    return f"unknown config key {dotted!r}{hint}; valid keys under {where}: {', '.join(sorted(valid))}"


def parse_value(text: str) -> Any:
    """Parse an override's value: YAML (``true``, ``null``, ``[1, 2]``, ``{a: 1}``), then Python float syntax."""
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse value {text!r}: {err}") from None
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
        try:
            return float(value)
        except ValueError:
            pass
    return value


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-3"`` → ``(["optim", "lr"], 0.003)``.

    Raises:
        ConfigError: no ``=``, or an empty key or key part.
    """
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=3e-3)")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    if not key.strip() or any(not p for p in parts):
        raise ConfigError(f"override {item!r} has an empty key or key part")
    return parts, parse_value(text)


def apply_overrides(cfg: Mapping[str, Any], overrides: Iterable[str | tuple[str, Any]]) -> dict[str, Any]:
    """A copy of ``cfg`` with each override applied in order.

    Args:
        cfg: a configuration (full or partial; keys are checked against :data:`smelib.config.DEFAULTS`).
        overrides: ``"a.b=value"`` strings, or ``("a.b", value)`` pairs with an already-parsed value.

    Raises:
        ConfigError: an unknown key (with a suggestion) or a malformed override.
    """
    out = copy.deepcopy(dict(cfg))
    for item in overrides:
        if isinstance(item, str):
            parts, value = parse_override(item)
        else:
            parts, value = str(item[0]).split("."), item[1]
        update: Any = value
        for part in reversed(parts):
            update = {part: update}
        # Check the key against the defaults' schema, then lay it over the config.
        deep_merge(DEFAULTS, update)
        out = _set_path(out, parts, value)
    return out


def _set_path(cfg: dict[str, Any], parts: list[str], value: Any) -> dict[str, Any]:
    node = cfg
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = copy.deepcopy(value)
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------------------------


def load_config(
    path: str | os.PathLike | None = None, overrides: Iterable[str | tuple[str, Any]] = ()
) -> dict[str, Any]:
    """Read a YAML config (or start from the defaults when ``path`` is None), apply overrides, validate.

    Args:
        path: a YAML file; relative paths are tried from the working directory, then the repository root.
        overrides: ``key=value`` strings (see :func:`apply_overrides`).

    Returns:
        The full, resolved configuration (every key of :data:`smelib.config.DEFAULTS` present).

    Raises:
        ConfigError: missing file, YAML syntax error, unknown key, or an invalid value.
    """
    raw: dict[str, Any] = {}
    name = "custom"
    if path is not None:
        file = _find_file(Path(path))
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ConfigError(f"{file}: invalid YAML: {err}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: a config must be a mapping at the top level, got {type(loaded).__name__}")
        raw = loaded
        name = file.stem
    try:
        cfg = apply_overrides(raw, overrides)
        if cfg.get("name") is None:
            cfg["name"] = name
        cfg = resolve(cfg)
    except ConfigError as err:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{err}") from None
    return cfg


def _find_file(path: Path) -> Path:
    from smelib.settings import repo_root

    candidates = [path.expanduser()]
    if not path.is_absolute():
        candidates.append(repo_root() / path)
        if path.suffix == "" and len(path.parts) == 1:
            candidates.append(repo_root() / "configs" / f"{path}.yaml")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config file {str(path)!r} not found (looked in the working directory and {repo_root()})")


#: Keys that configs of earlier versions carry and this version no longer has; accepted when unset (null), so that
#: stored run configs still resolve and resume.
RETIRED_KEYS: tuple[tuple[str, str], ...] = (("train", "nan_at_step"),)


def _drop_retired(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    if not any(isinstance(cfg.get(s), Mapping) and k in cfg[s] for s, k in RETIRED_KEYS):
        return cfg
    out = copy.deepcopy(dict(cfg))
    for section, key in RETIRED_KEYS:
        if isinstance(out.get(section), Mapping) and key in out[section]:
            if out[section][key] is not None:
                raise ConfigError(f"{section}.{key}: this key was removed from smelib; leave it out")
            out[section] = {k: v for k, v in out[section].items() if k != key}
    return out


def resolve(cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Lay ``cfg`` over :data:`smelib.config.DEFAULTS` and validate; the result is a complete, independent dict.

    Raises:
        ConfigError: unknown keys or invalid values.
    """
    out = deep_merge(DEFAULTS, _drop_retired(cfg or {}))
    if out["name"] is None:
        out["name"] = "custom"
    validate(out)
    return out


def _progressive(train: Mapping[str, Any]) -> None:
    spec = train["progressive"]
    if spec is None:
        return
    if not isinstance(spec, Mapping) or set(spec) != {"size", "epochs"}:
        raise _err("train.progressive", f"must be null or {{size: ..., epochs: ...}}, got {spec!r}")
    size = spec["size"]
    sizes = [size] if _is_int(size) else size if isinstance(size, (list, tuple)) and len(size) == 2 else None
    if sizes is None or not all(_is_int(v) and v >= 16 for v in sizes):
        raise _err("train.progressive.size", f"must be an integer >= 16 or [h, w] of them, got {size!r}")
    epochs = spec["epochs"]
    if not _is_int(epochs) or not 1 <= epochs < train["epochs"]:
        raise _err("train.progressive.epochs",
                   f"must be an integer in [1, train.epochs={train['epochs']}), got {epochs!r}")


def _distill(train: Mapping[str, Any]) -> None:
    spec = train["distill"]
    if spec is None:
        return
    if not isinstance(spec, Mapping) or set(spec) != {"teacher", "temperature", "weight"}:
        raise _err("train.distill", f"must be null or {{teacher: ..., temperature: ..., weight: ...}}, got {spec!r}")
    if not isinstance(spec["teacher"], str) or not spec["teacher"]:
        raise _err("train.distill.teacher", f"must be a checkpoint path or release name, got {spec['teacher']!r}")
    if not _is_num(spec["temperature"]) or spec["temperature"] <= 0:
        raise _err("train.distill.temperature", f"must be a number > 0, got {spec['temperature']!r}")
    if not _is_num(spec["weight"]) or spec["weight"] < 0:
        raise _err("train.distill.weight", f"must be a number >= 0, got {spec['weight']!r}")


def _err(key: str, message: str) -> ConfigError:
    return ConfigError(f"{key}: {message}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(cfg: Mapping[str, Any], section: str, key: str, minimum: int, optional: bool = False) -> None:
    value = cfg[section][key]
    if value is None and optional:
        return
    if not _is_int(value) or value < minimum:
        kind = "an integer" + (" or null" if optional else "")
        raise _err(f"{section}.{key}", f"must be {kind} >= {minimum}, got {value!r}")


def _num(cfg: Mapping[str, Any], section: str, key: str, lo: float, hi: float | None = None,
         optional: bool = False, lo_open: bool = False) -> None:
    value = cfg[section][key]
    if value is None and optional:
        return
    bad = not _is_num(value) or value < lo or (lo_open and value == lo) or (hi is not None and value > hi)
    if bad:
        rng = f"{'>' if lo_open else '>='} {lo}" + (f" and <= {hi}" if hi is not None else "")
        raise _err(f"{section}.{key}", f"must be a number {rng}{' or null' if optional else ''}, got {value!r}")


def _choice(cfg: Mapping[str, Any], section: str, key: str, choices: tuple[Any, ...]) -> None:
    value = cfg[section][key]
    if value not in choices:
        raise _err(f"{section}.{key}", f"must be one of {', '.join(map(str, choices))}, got {value!r}")


def _bool(cfg: Mapping[str, Any], section: str, key: str, allow_auto: bool = False) -> None:
    value = cfg[section][key]
    if isinstance(value, bool) or (allow_auto and value == "auto"):
        return
    raise _err(f"{section}.{key}", f"must be true or false{' or auto' if allow_auto else ''}, got {value!r}")


def validate(cfg: Mapping[str, Any]) -> None:
    """Check every value of a full config (see the module docstring).

    Raises:
        ConfigError: on the first bad value.
    """
    if not isinstance(cfg["name"], str) or not cfg["name"] or any(c in cfg["name"] for c in "/\\ "):
        raise _err("name", f"must be a non-empty string without slashes or spaces, got {cfg['name']!r}")
    for section in ("model", "data", "optim", "schedule", "train", "model_init", "eval"):
        if not isinstance(cfg[section], Mapping):
            raise _err(section, f"must be a mapping, got {type(cfg[section]).__name__}")

    model = cfg["model"]
    if not isinstance(model["name"], str):
        raise _err("model.name", f"must be a string, got {model['name']!r}")
    from smelib.models import names

    if model["name"] not in names():
        raise _err("model.name", f"unknown model {model['name']!r}; registered: {', '.join(names())}")
    if not isinstance(model["overrides"], Mapping):
        raise _err("model.overrides", f"must be a mapping of constructor arguments, got {model['overrides']!r}")
    if not isinstance(model["deeplab_overrides"], Mapping):
        raise _err("model.deeplab_overrides", f"must be a mapping, got {model['deeplab_overrides']!r}")
    for key in ("num_classes", "in_channels"):
        if key in model["overrides"] or key in model["deeplab_overrides"]:
            hint = "data.num_classes" if key == "num_classes" else "model.in_channels"
            raise _err(f"model.overrides.{key}", f"set {hint} instead, not a model override")
    _int(cfg, "model", "in_channels", 1)
    if model["init"] is not None and not isinstance(model["init"], (str, os.PathLike)):
        raise _err("model.init", f"must be a checkpoint path or release name, or null, got {model['init']!r}")

    data = cfg["data"]
    if data["root"] is not None and not isinstance(data["root"], (str, os.PathLike)):
        raise _err("data.root", f"must be a path or null, got {data['root']!r}")
    _choice(cfg, "data", "split", _SPLITS)
    _int(cfg, "data", "seed", 0)
    _num(cfg, "data", "val_fraction", 0.0, 0.95)
    size = data["size"]
    if size is not None:
        ok = (_is_int(size) and size > 0) or (
            isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(s) and s > 0 for s in size)
        )
        if not ok:
            raise _err("data.size", f"must be null (native), a positive integer or [height, width], got {size!r}")
    if data["augment"] is not None:
        if not isinstance(data["augment"], Mapping):
            raise _err("data.augment", f"must be a mapping or null, got {data['augment']!r}")
        try:
            from smelib.data.augment import Augment

            Augment.from_config(data["augment"])
        except (TypeError, ValueError) as err:
            raise _err("data.augment", str(err)) from None
    if data["groups"] is not None and not isinstance(data["groups"], (str, os.PathLike)):
        raise _err("data.groups", f"must be a path to a groups JSON or null, got {data['groups']!r}")
    _int(cfg, "data", "batch_size", 1)
    _int(cfg, "data", "eval_batch_size", 1)
    _int(cfg, "data", "workers", 0)
    _int(cfg, "data", "num_classes", 2, optional=True)
    _int(cfg, "data", "ignore_index", 0)
    _int(cfg, "data", "limit", 1, optional=True)

    _choice(cfg, "optim", "name", _OPTIMS)
    _num(cfg, "optim", "lr", 0.0, lo_open=True)
    _num(cfg, "optim", "weight_decay", 0.0)
    _num(cfg, "optim", "momentum", 0.0, 1.0)
    _bool(cfg, "optim", "nesterov")
    betas = cfg["optim"]["betas"]
    if not (isinstance(betas, (list, tuple)) and len(betas) == 2 and all(_is_num(b) and 0 <= b < 1 for b in betas)):
        raise _err("optim.betas", f"must be two numbers in [0, 1), got {betas!r}")
    _num(cfg, "optim", "eps", 0.0, lo_open=True)
    if cfg["optim"]["name"] == "sgd" and cfg["optim"]["nesterov"] and cfg["optim"]["momentum"] == 0:
        raise _err("optim.nesterov", "Nesterov momentum needs optim.momentum > 0")

    _choice(cfg, "schedule", "name", _SCHEDULES)
    _num(cfg, "schedule", "warmup_epochs", 0.0)
    _num(cfg, "schedule", "warmup_start_ratio", 0.0, 1.0)
    _num(cfg, "schedule", "min_lr_ratio", 0.0, 1.0)
    _num(cfg, "schedule", "power", 0.0, lo_open=True)

    loss = cfg["loss"]
    if not isinstance(loss, (str, Mapping)):
        raise _err("loss", f"must be a spec string like 'focal+dice' or a mapping, got {loss!r}")
    try:
        from smelib.losses import build_loss

        build_loss(loss, num_classes=data["num_classes"] or 4, ignore_index=data["ignore_index"])
    except (ValueError, TypeError) as err:
        raise _err("loss", str(err)) from None

    train = cfg["train"]
    _int(cfg, "train", "epochs", 1)
    _int(cfg, "train", "max_steps", 1, optional=True)
    _int(cfg, "train", "val_every", 0)
    _choice(cfg, "train", "amp", _AMP)
    _bool(cfg, "train", "channels_last", allow_auto=True)
    _num(cfg, "train", "grad_clip", 0.0, optional=True, lo_open=True)
    if cfg["train"]["ema"] is not None and not (_is_num(cfg["train"]["ema"]) and 0 < cfg["train"]["ema"] < 1):
        raise _err("train.ema", f"must be a decay in (0, 1) or null, got {cfg['train']['ema']!r}")
    _progressive(cfg["train"])
    _distill(cfg["train"])
    _int(cfg, "train", "checkpoint_every_steps", 0)
    _int(cfg, "train", "seed", 0)
    _bool(cfg, "train", "deterministic")
    device = train["device"]
    if not isinstance(device, str) or not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        raise _err("train.device", f"must be auto, cpu, cuda or cuda:N, got {device!r}")
    _int(cfg, "train", "threads", 1, optional=True)
    _bool(cfg, "train", "sync_bn", allow_auto=True)
    _bool(cfg, "train", "freeze_bn")
    _bool(cfg, "train", "test_at_end")
    _bool(cfg, "train", "save_predictions")

    _bool(cfg, "eval", "tta")
    _choice(cfg, "eval", "split", ("test", "val"))
    _validate_mechanisms(cfg)


def _validate_mechanisms(cfg: Mapping[str, Any]) -> None:
    """``model_init`` and ``eval.decision``/``eval.threshold`` (see :mod:`smelib.mechanisms`)."""

    _bool(cfg, "model_init", "classifier_prior")
    _choice(cfg, "model_init", "class_weights", CLASS_WEIGHT_SCHEMES)
    _choice(cfg, "eval", "decision", DECISIONS)
    th = cfg["eval"]["threshold"]
    if not isinstance(th, Mapping):
        raise _err("eval.threshold", f"must be a mapping with keys tau0, slope, min, max, scope, got {th!r} "
                   "(the static threshold is eval.threshold.tau0)")
    named = {"eval.threshold": th}  # so that the messages name the full dotted key
    if not _is_num(th["tau0"]) or not 0.0 < th["tau0"] < 1.0:
        raise _err("eval.threshold.tau0", f"must be a number > 0 and < 1, got {th['tau0']!r}")
    _num(named, "eval.threshold", "slope", 0.0)
    _num(named, "eval.threshold", "min", 0.0, 1.0)
    _num(named, "eval.threshold", "max", 0.0, 1.0)
    if th["min"] > th["max"]:
        raise _err("eval.threshold.min", f"must be <= eval.threshold.max, got {th['min']!r} > {th['max']!r}")
    _choice(named, "eval.threshold", "scope", SCOPES)


def dump_yaml(cfg: Mapping[str, Any]) -> str:
    """The config as YAML text (keys in their defined order)."""
    return yaml.safe_dump(_plain(cfg), sort_keys=False, default_flow_style=False)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
