"""Tests of smelib.study.data_figures: per-image class counts and kinds, example picking, copy alignment and mask
disagreement, shared halves of composites, group bookkeeping, and that the figures draw."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from _data_helpers import AUDIT_DIR, SAMPLE, texture, write_native  # noqa: E402
from smelib import data as sd  # noqa: E402
from smelib.study import data_figures as dv  # noqa: E402
from smelib.data.splits import dihedral, dihedral_inverse  # noqa: E402
from smelib.palette import CLASS_COLORS
from smelib.data import NEU_SEG_CLASSES  # noqa: E402


@pytest.fixture(scope="module")
def sample() -> sd.DatasetInfo:
    return sd.open_dataset(SAMPLE)


@pytest.fixture(scope="module")
def copy_groups() -> list[list[str]]:
    return json.loads((AUDIT_DIR / "neu_seg_groups.json").read_text())["copy_groups"]


def _np_dihedral(x: np.ndarray, k: int) -> np.ndarray:
    return dihedral(torch.from_numpy(np.ascontiguousarray(x)), k).numpy()


@pytest.fixture()
def rotated(tmp_path: Path) -> sd.DatasetInfo:
    """A reference picture and its 7 other dihedral transforms; the rot180 copy's mask has 40 pixels changed."""
    img = np.kron(texture(3, 50, 50), np.ones((4, 4), dtype=np.uint8))  # 200 x 200, structure well above JPEG noise
    mask = np.zeros((200, 200), dtype=np.uint8)
    mask[20:60, 30:90] = 1
    mask[120:180, 140:150] = 3
    items = {"test/000001": (img, mask)}
    for k in range(1, 8):
        m = _np_dihedral(mask, k).copy()
        if k == 2:
            m[0:4, 0:10] = 2
        items[f"training/{k:06d}"] = (_np_dihedral(img, k), m)
    return sd.open_dataset(write_native(tmp_path, items))


def test_mask_class_counts_and_kinds(tmp_path: Path) -> None:
    img = texture(0, 20, 20)
    one = np.zeros((20, 20), np.uint8)
    one[:5, :4] = 2  # 20 px of patches
    two = one.copy()
    two[10:, :] = 1  # 200 px of inclusion
    two[0, 19] = 255  # ignored pixel: not counted
    info = sd.open_dataset(write_native(tmp_path, {"training/000001": (img, one), "training/000002": (img, two),
                                                    "test/000001": (img, np.zeros((20, 20), np.uint8))}))
    counts = dv.mask_class_counts(info)
    assert counts.shape == (3, 4) and counts.dtype == np.int64
    assert counts.tolist() == [[400, 0, 0, 0], [380, 0, 20, 0], [179, 200, 20, 0]]  # ids sorted: test first
    assert dv.image_kinds(counts, NEU_SEG_CLASSES) == [dv.BACKGROUND_ONLY, "patches", dv.MIXED]
    assert dv.mask_class_counts(info, ["training/000001"]).tolist() == [[380, 0, 20, 0]]
    with pytest.raises(ValueError):
        dv.image_kinds(counts[:, :3], NEU_SEG_CLASSES)


def test_sample_kinds_match_readme(sample: sd.DatasetInfo) -> None:
    counts = dv.mask_class_counts(sample)
    assert counts.sum(1).tolist() == [200 * 200] * len(sample)
    # data/README.md: 22 images contain inclusion, 35 patches, 27 scratches.
    assert (counts[:, 1:] > 0).sum(0).tolist() == [22, 35, 27]


def test_pick_examples_seeded_and_distinct() -> None:
    ids = [f"i{n}" for n in range(10)]
    kinds = ["a"] * 6 + ["b"] * 4
    groups = [["i0", "i1", "i2"], ["i3", "i6"]]
    a = dv.pick_examples(ids, kinds, ["b", "a"], 2, seed=1, groups=groups)
    assert a == dv.pick_examples(ids, kinds, ["b", "a"], 2, seed=1, groups=groups)
    assert list(a) == ["b", "a"] and all(len(v) == 2 for v in a.values())
    assert all(k == "a" for k in (kinds[ids.index(s)] for s in a["a"]))
    picked = a["a"] + a["b"]
    assert sum(s in groups[0] for s in picked) <= 1 and sum(s in groups[1] for s in picked) <= 1
    assert dv.pick_examples(ids, kinds, ["c"], 3) == {"c": []}
    assert len(dv.pick_examples(ids, kinds, ["b"], 9)["b"]) == 4


def test_best_dihedral_recovers_every_transform() -> None:
    img = np.kron(texture(7, 50, 50), np.ones((4, 4), dtype=np.uint8))
    for k in range(8):
        found, score = dv.best_dihedral(img, _np_dihedral(img, k))
        assert found == k and score > 0.999
        assert np.array_equal(_np_dihedral(_np_dihedral(img, k), dihedral_inverse(found)), img)
    # unrelated pictures score low
    _, score = dv.best_dihedral(img, np.kron(texture(8, 50, 50), np.ones((4, 4), dtype=np.uint8)))
    assert score < 0.7
    assert dv.dihedral_descriptors(img).shape == (8, 50 * 50)
    with pytest.raises(ValueError):
        dv.dihedral_descriptors(img[:, :100])


def test_align_copies_and_disagreement(rotated: sd.DatasetInfo) -> None:
    others = [s for s in rotated.ids if s.startswith("training/")]
    ref_img, ref_mask, copies = dv.align_copies(rotated, "test/000001", ["test/000001", *others])
    assert ref_img.shape == ref_mask.shape == (200, 200) and len(copies) == 7
    for cp in copies:
        k = int(cp.sample_id.split("/")[1])
        assert cp.transform == k and cp.score > 0.99
        assert np.array_equal(cp.mask, _np_dihedral(cp.mask_back, k))
        # JPEG noise only: the rotated-back picture matches the reference closely
        assert np.abs(cp.image_back.astype(int) - ref_img.astype(int)).mean() < 3
        assert cp.disagreement == (40 / 40000 if k == 2 else 0.0)
    assert copies[1].transform_name == "rot180"


def test_pair_disagreements_all_pairs(rotated: sd.DatasetInfo) -> None:
    group = list(rotated.ids)
    pairs = dv.pair_disagreements(rotated, [group, ["test/000001"]])
    assert len(pairs) == 8 * 7 // 2
    assert [(p.a, p.b) for p in pairs[:2]] == [(group[0], group[1]), (group[0], group[2])]
    differing = {(p.a, p.b) for p in pairs if p.fraction > 0}
    # exactly the pairs that involve the edited rot180 copy
    assert differing == {(p.a, p.b) for p in pairs if "training/000002" in (p.a, p.b)}
    for p in pairs:
        if p.a == "test/000001":
            assert p.transform == int(p.b.split("/")[1])


def test_pair_disagreements_match_audit_on_sample(sample: sd.DatasetInfo, copy_groups: list[list[str]]) -> None:
    pairs = dv.pair_disagreements(sample, dv.restrict_groups(copy_groups, sample.ids))
    by = {(p.a, p.b): p.fraction for p in pairs}
    # data/README.md: each exact-duplicate pair's masks differ in 580 pixels
    assert by[("training/001281", "training/001285")] == 580 / 40000
    assert by[("test/000050", "training/000940")] == 0.0
    assert all(0.02 < by[("test/000650", s)] < 0.03 for s in ("training/003640", "training/003720",
                                                                 "training/003800"))


def test_shared_half_of_sample_composite(sample: sd.DatasetInfo) -> None:
    comp = dv.read_gray(sample, "test/000765")
    j, half, score = dv.shared_half(comp, dv.read_gray(sample, "training/000607"))
    assert (j, half) == (3, "top") and score > 0.99
    # the source's copy stored in the composite's orientation needs no turn
    assert dv.shared_half(comp, dv.read_gray(sample, "training/003227"))[:2] == (0, "top")


def test_group_bookkeeping() -> None:
    groups = [["a", "b", "c"], ["d"], ["e", "f"]]
    assert dv.restrict_groups(groups, {"a", "c", "f"}) == [["a", "c"], ["f"]]
    split = {"train": ["a", "b", "e"], "test": ["c", "d", "f"]}
    assert dv.groups_crossing(groups, split) == [["a", "b", "c"], ["e", "f"]]
    assert dv.groups_crossing(groups, {"train": ["a", "b", "c", "e"], "test": ["d"]}) == []
    assert dv.with_copy_in(groups, ["c", "d", "f", "zz"], ["a", "b", "e"]) == ["c", "f"]
    assert dv.with_copy_in(groups, ["a"], ["a"]) == []


def test_sample_leakage_from_groups_file(sample: sd.DatasetInfo, copy_groups: list[list[str]]) -> None:
    cg = dv.restrict_groups(copy_groups, sample.ids)
    leaked = dv.with_copy_in(cg, sample.split_lists["test"], sample.split_lists["training"])
    # data/README.md: the leaked test images in the sample
    assert leaked == ["test/000050", "test/000250", "test/000301", "test/000305", "test/000450", "test/000650",
                      "test/000765"]


def test_colours_and_handles() -> None:
    assert dv.rgb01(2) == tuple(c / 255 for c in CLASS_COLORS[2])
    handles = dv.class_patches(NEU_SEG_CLASSES)
    assert [h.get_label() for h in handles] == list(NEU_SEG_CLASSES[1:])
    assert len(dv.class_patches(NEU_SEG_CLASSES, include_background=True)) == 4


def test_figures_draw(sample: sd.DatasetInfo, copy_groups: list[list[str]]) -> None:
    counts = dv.mask_class_counts(sample)
    kinds = dv.image_kinds(counts, NEU_SEG_CLASSES)
    ex = dv.pick_examples(sample.ids, kinds, ["inclusion", "patches", "scratches", dv.MIXED], 2)
    train = [n for n, s in enumerate(sample.ids) if s.startswith("training/")]
    figs = [
        dv.sample_grid(sample, ex, NEU_SEG_CLASSES),
        dv.class_fraction_figure({"training": counts[train], "all": counts}, NEU_SEG_CLASSES),
        dv.defect_size_figure(counts, NEU_SEG_CLASSES, 200 * 200),
        dv.rotated_copies_figure(sample, "test/000650", ["training/003640", "training/003720"], NEU_SEG_CLASSES),
        dv.composite_figure(sample, "test/000765", "training/000607", NEU_SEG_CLASSES),
    ]
    assert [len(f.axes) for f in figs[:2]] == [4 * 4, 2]
    assert len(figs[3].axes) == 9
    for f in figs:
        f.canvas.draw()
        plt.close(f)
