"""The paper's unspecified mechanisms (smelib.mechanisms): the class-prior classifier init and class weights, the
static and dynamic thresholds, their wiring into config, engine, evaluate/predict and `smelib eval`, and that
with the options off training is bit-identical to a run that never names them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_helpers import TINY_MODEL, make_neu, tiny_config
from torch import nn

from smelib import inference
from smelib import training as engine
from smelib import mechanisms as M
from smelib.checkpoint import read_checkpoint
from smelib.config import ConfigError, load_config
from smelib.data.loading import load_data
from smelib.models import build

PI = [0.88, 0.02, 0.07, 0.03]  # NEU-Seg-like class pixel frequencies


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return build(TINY_MODEL["name"], num_classes=4, **TINY_MODEL["overrides"]).eval()


# ---------------------------------------------------------------------------------------------------------------
# (a) the class prior and class weights


def test_prior_init_makes_the_untrained_mean_softmax_the_class_frequencies() -> None:
    model = _tiny_model()
    name, conv = M.find_classifier(model, 4)
    assert name == "decoder.classifier"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    with torch.no_grad():
        conv.weight.zero_()  # logits = bias: the part of the output the prior sets
    M.init_classifier_prior(model, PI)
    assert torch.equal(rng, torch.get_rng_state())  # no random draw
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"decoder.classifier.weight", "decoder.classifier.bias"}  # the weight: zeroed above
    with torch.no_grad():
        mean = torch.softmax(model(torch.randn(2, 3, 40, 40)), 1).mean((0, 2, 3))
    assert torch.allclose(mean, torch.tensor(PI), atol=1e-3), mean
    assert torch.allclose(conv.bias, torch.tensor(PI).log(), atol=1e-6)


def test_prior_floor_and_classifier_lookup_errors() -> None:
    bias = M.class_prior_bias([0.9, 0.1, 0.0])  # an absent class gets log(eps), not -inf
    assert torch.isfinite(bias).all() and bias[2] == pytest.approx(math.log(M.PRIOR_EPS), abs=1e-3)
    assert torch.softmax(bias, 0).sum() == pytest.approx(1.0)
    two = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1))
    with pytest.raises(ValueError, match="several Conv2d with 4 outputs"):
        M.find_classifier(two, 4)
    with pytest.raises(ValueError, match="no Conv2d with 5 outputs"):
        M.find_classifier(two, 5)
    with pytest.raises(ValueError, match="class frequencies must be"):
        M.class_prior_bias([0.5, -0.1])


def test_inverse_sqrt_class_weights() -> None:
    w = M.class_weights(PI, "inverse_sqrt")
    assert w is not None and sum(p * x for p, x in zip(PI, w)) == pytest.approx(1.0)
    assert w[1] / w[0] == pytest.approx(math.sqrt(PI[0] / PI[1]))
    assert M.class_weights(PI, "none") is None
    with pytest.raises(ValueError, match="none, inverse_sqrt"):
        M.class_weights(PI, "inverse")


def test_training_stats_count_labelled_pixels_and_defect_area_quartiles() -> None:
    masks = []
    for area in (0, 4, 10, 20, 50):  # defect pixels out of 100 (one image without a defect)
        m = torch.zeros(10, 10, dtype=torch.uint8)
        m.view(-1)[:area] = 2
        m[9, 9] = 255 if area == 50 else m[9, 9]  # one ignored pixel: not counted
        masks.append((torch.zeros(3, 10, 10), m.long()))
    s = M.training_stats(masks, 4)
    assert s.n_images == 5 and s.n_defect_images == 4 and sum(s.class_pixels) == 499
    assert s.class_pixels[2] == 84 and s.class_pixel_fraction[2] == pytest.approx(84 / 499)
    areas = [0.04, 0.10, 0.20, 50 / 99]
    assert s.defect_area_q1 == pytest.approx(np.quantile(areas, 0.25))
    assert s.defect_area_q3 == pytest.approx(np.quantile(areas, 0.75))
    assert M.TrainStats.from_dict(json.loads(json.dumps(s.to_dict()))) == s


# ---------------------------------------------------------------------------------------------------------------
# (b) the decision rule


def _maps(*kinds: str, size: int = 20) -> torch.Tensor:
    """Probability maps (N, 4, size, size): each image a core defect (d = 0.9) and a fringe of d = 0.4 (small
    image) or d = 0.6 (large image), the defect mass on class 2; the rest background (d = 0.05)."""
    out = []
    for kind in kinds:
        d = torch.full((size, size), 0.05)
        if kind == "small":  # core 4 px (1 %), fringe 12 px at d = 0.4 (found only below tau = 0.4)
            d[:6, :6] = 0.4
            d[2:4, 2:4] = 0.9
        elif kind == "large":  # core 160 px, fringe 40 px at d = 0.6: 50 % provisional area (> q3)
            d[:8, :] = 0.9
            d[8:10, :] = 0.6
        elif kind == "medium":  # 10 % provisional area: between q1 and q3
            d[:2, :] = 0.9
        p = torch.zeros(4, size, size)
        p[0], p[2] = 1 - d, d * 0.8
        p[1] = p[3] = d * 0.1
        out.append(p)
    return torch.stack(out)


RULE = dict(tau0=0.5, slope=0.2, small=0.05, large=0.2)


def test_dynamic_threshold_moves_down_for_small_and_up_for_large_defects() -> None:
    probs = _maps("small", "medium", "large", "empty")
    dyn = M.DecisionRule("dynamic", **RULE)
    tau = dyn.thresholds(probs)
    assert tau.tolist() == pytest.approx([0.3, 0.5, 0.7, 0.3])  # an empty image counts as small
    static = M.decide(probs, M.DecisionRule("static", tau0=0.5))
    labels = dyn(probs)
    area = lambda y: (y > 0).flatten(1).sum(1).tolist()  # noqa: E731
    assert area(static) == [4, 40, 200, 0]
    assert area(labels) == [36, 40, 160, 0]  # small: the fringe is found; large: the fringe is dropped
    assert set(labels.unique().tolist()) <= {0, 2}  # the defect class is the argmax over defect classes
    # Batch scope: one tau per batch, lower the more small-defect images it holds.
    batch = M.DecisionRule("dynamic", scope="batch", **RULE)
    t_small = batch.thresholds(_maps("small", "small", "large"))
    t_large = batch.thresholds(_maps("large", "large", "small"))
    assert t_small.tolist() == pytest.approx([0.5 - 0.2 / 3] * 3)
    assert t_large.tolist() == pytest.approx([0.5 + 0.2 / 3] * 3)
    # Bounds clamp; slope 0 is the static rule.
    clamped = M.DecisionRule("dynamic", tau0=0.5, slope=1.0, tau_min=0.4, tau_max=0.55, small=0.05, large=0.2)
    assert clamped.thresholds(probs).tolist() == pytest.approx([0.4, 0.5, 0.55, 0.4])
    flat = M.DecisionRule("dynamic", tau0=0.5, slope=0.0, small=0.05, large=0.2)
    assert torch.equal(flat(probs), static)


def test_static_half_on_two_classes_is_exactly_argmax() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 17, 19, generator=g)
    logits[:, 1, :4] = logits[:, 0, :4]  # exact ties: argmax and the threshold both say background
    probs = torch.softmax(logits, 1)
    static = M.decide(probs, M.DecisionRule("static", tau0=0.5))
    assert torch.equal(static, probs.argmax(1))
    assert torch.equal(M.decide(probs, None), probs.argmax(1))
    assert torch.equal(M.decide(probs, M.DecisionRule("argmax")), probs.argmax(1))


def test_static_threshold_on_four_classes_follows_its_definition() -> None:
    probs = torch.softmax(torch.randn(2, 4, 9, 9, generator=torch.Generator().manual_seed(1)), 1)
    for tau in (0.3, 0.5, 0.7):
        y = M.decide(probs, M.DecisionRule("static", tau0=tau))
        fg = (1 - probs[:, 0]) > tau + 1e-6
        bg = (1 - probs[:, 0]) < tau - 1e-6
        assert torch.equal(y[fg], probs[:, 1:].argmax(1)[fg] + 1) and bool((y[bg] == 0).all())


def test_rule_validation_and_config_mapping() -> None:
    with pytest.raises(ValueError, match="defect-area quartiles"):
        M.DecisionRule("dynamic")
    with pytest.raises(ValueError, match=r"tau0 must be in \(0, 1\)"):
        M.DecisionRule("static", tau0=1.0)
    with pytest.raises(ValueError, match="decision must be one of argmax, static, dynamic"):
        M.DecisionRule("otsu")
    stats = {"class_pixel_fraction": PI, "class_pixels": [88, 2, 7, 3], "n_images": 10, "n_defect_images": 10,
             "defect_area_q1": 0.04, "defect_area_median": 0.09, "defect_area_q3": 0.16}
    cfg = load_config(None, ["eval.decision=dynamic", "eval.threshold.slope=0.1", "eval.threshold.scope=batch"])
    rule = M.rule_from_config(cfg["eval"], stats)
    assert (rule.mode, rule.slope, rule.scope, rule.small, rule.large) == ("dynamic", 0.1, "batch", 0.04, 0.16)
    assert M.rule_from_config(cfg["eval"], stats, mode="static", tau0=0.4).tau0 == 0.4
    # An older checkpoint: no eval.decision/threshold in its config, no train_stats.
    old = {"config": {"eval": {"tta": False, "split": "test"}, "data": {"ignore_index": 255}}, "num_classes": 4}
    assert M.rule_for_checkpoint(old).mode == "argmax"
    with pytest.raises(ValueError, match="stores no training statistics"):
        M.rule_for_checkpoint(old, mode="dynamic")
    masks = [(torch.zeros(1, 2, 2), torch.tensor([[0, 1], [0, 0]])),
             (torch.zeros(1, 2, 2), torch.tensor([[2, 2], [0, 0]]))]
    assert M.rule_for_checkpoint(old, mode="dynamic", train_dataset=lambda: masks).large == pytest.approx(0.4375)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model_init.classifier_prior=maybe", "model_init.classifier_prior: must be true or false"),
        ("model_init.class_weights=inverse", "model_init.class_weights: must be one of none, inverse_sqrt"),
        ("model_init.classifier_prio=true", r"unknown config key 'model_init.classifier_prio' \(did you mean"),
        ("model_init=true", "model_init: must be a mapping"),
        ("eval.decision=otsu", "eval.decision: must be one of argmax, static, dynamic"),
        ("eval.threshold=0.3", r"eval.threshold: must be a mapping .* \(the static threshold is eval.threshold.tau0\)"),
        ("eval.threshold.tau0=1", r"eval.threshold.tau0: must be a number > 0 and < 1"),
        ("eval.threshold.slope=-1", "eval.threshold.slope: must be a number >= 0"),
        ("eval.threshold.max=1.5", "eval.threshold.max: must be a number >= 0.0 and <= 1.0"),
        ("eval.threshold.min=0.99", "eval.threshold.min: must be <= eval.threshold.max"),
        ("eval.threshold.scope=pixel", "eval.threshold.scope: must be one of image, batch"),
    ],
)
def test_config_errors_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


# ---------------------------------------------------------------------------------------------------------------
# Wiring: engine, evaluate/predict, CLI


@pytest.fixture(scope="module")
def neu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_neu(tmp_path_factory.mktemp("neu"))


def _two_steps(neu: Path, **sections: dict) -> dict:
    cfg = tiny_config(neu, train={"max_steps": 2, "val_every": 0, "test_at_end": False, "checkpoint_every_steps": 0})
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    return cfg


def test_options_off_train_exactly_as_without_the_keys(neu: Path, tmp_path: Path) -> None:
    absent = engine.train(_two_steps(neu), out=tmp_path / "absent", quiet=True)
    off = engine.train(_two_steps(neu, model_init={"classifier_prior": False, "class_weights": "none"},
                                  eval={"decision": "argmax"}), out=tmp_path / "off", quiet=True)
    a, b = read_checkpoint(absent.last_checkpoint), read_checkpoint(off.last_checkpoint)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["history"][0]["train_loss"] == b["history"][0]["train_loss"]
    assert absent.record["final"]["val"] == off.record["final"]["val"]
    assert absent.record["model_init"] == {"classifier_prior": None, "class_weights": None}
    assert absent.record["final"]["decision"] == {"mode": "argmax"}


def test_options_on_run_records_training_split_statistics(neu: Path, tmp_path: Path, capsys) -> None:
    cfg = _two_steps(neu, model_init={"classifier_prior": True, "class_weights": "inverse_sqrt"},
                     eval={"decision": "dynamic"})
    cfg["train"]["test_at_end"] = True
    run = engine.train(cfg, out=tmp_path / "on", quiet=True)
    rec = run.record
    # The statistics are those of the training subset alone (no validation or test image).
    resolved = load_config(None, [("data.root", str(neu)), ("data.val_fraction", 0.25)])
    bundle = load_data(resolved, seed=0)
    expected = M.training_stats(bundle.train, 4).to_dict()
    assert rec["train_stats"] == expected and rec["train_stats"]["n_images"] == rec["split"]["train"] == 12
    assert expected != M.training_stats(bundle.test, 4).to_dict()
    assert rec["model_init"]["classifier_prior"]["module"] == "decoder.classifier"
    assert rec["model_init"]["classifier_prior"]["bias"] == pytest.approx(
        M.class_prior_bias(expected["class_pixel_fraction"]).tolist())
    assert rec["model_init"]["class_weights"] == pytest.approx(M.class_weights(expected["class_pixel_fraction"]))
    dec = rec["final"]["decision"]
    assert dec["mode"] == "dynamic" and dec["small"] == expected["defect_area_q1"]
    assert dec["large"] == expected["defect_area_q3"]
    assert read_checkpoint(run.last_checkpoint)["train_stats"] == expected
    # evaluate / predict / `smelib eval` with each decision on the run's checkpoint.
    ckpt = str(run.checkpoint)
    from smelib.cli import main

    outs = {}
    for mode in ("argmax", "static", "dynamic"):
        assert main(["eval", "--checkpoint", ckpt, "--threshold", mode, "--json"]) == 0
        outs[mode] = json.loads(capsys.readouterr().out)
        assert outs[mode]["decision"]["mode"] == mode and 0 <= outs[mode]["miou"] <= 1
    assert outs["dynamic"]["miou"] == pytest.approx(rec["final"]["test"]["miou"])
    rule = M.rule_for_checkpoint(read_checkpoint(run.checkpoint), mode="argmax")
    plain = inference.evaluate(ckpt, bundle.test).to_dict()
    assert plain == inference.evaluate(ckpt, bundle.test, decision=rule).to_dict()
    image = bundle.test.raw(0)[0]
    assert inference.predict(ckpt, [image], decision="dynamic")[0].shape == tuple(image.shape[-2:])
    assert np.array_equal(inference.predict(ckpt, [image])[0], inference.predict(ckpt, [image], decision="argmax")[0])
