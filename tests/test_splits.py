"""Tests of smelib.data.splits: dihedral transforms, duplicate groups, official and grouped splits, the audit."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _data_helpers import (
    AUDIT_DIR,
    EXACT_DUPLICATE_PAIRS,
    FULL,
    FULL_REASON,
    SAMPLE,
    SAMPLE_EXACT_DUP_GROUP,
    SAMPLE_LEAKED_TEST,
    texture,
    write_voc,
)
from smelib import data as sd
from smelib.data import splits as sp
from smelib.cli import main


@pytest.fixture(scope="module")
def info() -> sd.DatasetInfo:
    return sd.open_dataset(SAMPLE)


@pytest.fixture(scope="module")
def groups(info: sd.DatasetInfo) -> sp.Groups:
    return sp.find_groups(info)


def _jpeg(arr: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return np.array(Image.open(buf))


# ---------------------------------------------------------------------------------------------- dihedral


def test_dihedral_elements_are_distinct_and_inverses_undo_them() -> None:
    x = torch.arange(12.0).view(3, 4)
    square = torch.arange(16.0).view(4, 4)
    outs = [sp.dihedral(square, k) for k in range(8)]
    assert len({tuple(o.flatten().tolist()) for o in outs}) == 8
    for k in range(8):
        assert torch.equal(sp.dihedral(sp.dihedral(x, k), sp.dihedral_inverse(k)), x)
    assert torch.equal(sp.dihedral(x, 4), x.flip(-1))
    assert sp.dihedral(x, 1).shape == (4, 3)
    with pytest.raises(ValueError):
        sp.dihedral(x, 8)


# ---------------------------------------------------------------------------------------------- groups


def test_sample_groups_partition_every_image_once(info: sd.DatasetInfo, groups: sp.Groups) -> None:
    for partition in (groups.groups, groups.copy_groups):
        flat = [s for g in partition for s in g]
        assert sorted(flat) == list(info.ids) and len(flat) == len(set(flat))
        assert all(g == sorted(g) for g in partition)
        assert [g[0] for g in partition] == sorted(g[0] for g in partition)


def test_sample_known_copies_are_grouped(groups: sp.Groups) -> None:
    by_copy = {s: tuple(g) for g in groups.copy_groups for s in g}
    # Four rotations of one picture: a test image and its three training copies.
    assert by_copy["test/000050"] == ("test/000050", "training/000940", "training/001810", "training/002680")
    assert by_copy["test/000250"] == ("test/000250", "training/001230", "training/002100", "training/002970")
    # Two rotation groups joined by the exact duplicates (training 001281/001285, test 000301/000305...).
    assert list(by_copy["test/000301"]) == SAMPLE_EXACT_DUP_GROUP
    # An official test image with no copy anywhere stays alone.
    assert by_copy["test/000001"] == ("test/000001",)
    # Every copy link clears the documented threshold.
    copies = [lk for lk in groups.links if lk.kind == "copy"]
    assert copies and all(lk.score >= sp.COPY_THRESHOLD for lk in copies)


def test_sample_composite_overlap_joins_groups_only_with_overlaps(info: sd.DatasetInfo, groups: sp.Groups) -> None:
    # test/000765 is a composite that contains half of training/000607 (checked by eye).
    by_copy = {s: set(g) for g in groups.copy_groups for s in g}
    by_group = {s: set(g) for g in groups.groups for s in g}
    assert "training/000607" not in by_copy["test/000765"]
    assert "training/000607" in by_group["test/000765"]
    assert any(lk.kind == "overlap" and {lk.a, lk.b} == {"test/000765", "training/000607"} for lk in groups.links)
    only_copies = sp.find_groups(info, overlaps=False)
    assert only_copies.groups == only_copies.copy_groups == groups.copy_groups


def test_synthetic_rotated_flipped_reencoded_copies_are_found(tmp_path: Path) -> None:
    images, masks = {}, {}
    for n in range(6):
        base = texture(100 + n, 64, 64)
        images[f"p{n}_orig"] = base
        masks[f"p{n}_orig"] = np.zeros((64, 64), np.uint8)
        if n < 3:  # patches 0-2 get a rotated and a flipped copy, JPEG re-encoded at another quality
            for k, tag in ((1 + n, "rot"), (4 + n, "flip")):
                t = sp.dihedral(torch.from_numpy(base), k).numpy()
                images[f"p{n}_{tag}"] = _jpeg(np.ascontiguousarray(t), quality=70)
                masks[f"p{n}_{tag}"] = np.zeros((64, 64), np.uint8)
    # A non-square picture and its 90-degree turn.
    wide = texture(7, 48, 80)
    images["wide"], masks["wide"] = wide, np.zeros((48, 80), np.uint8)
    images["wide_rot"] = _jpeg(np.ascontiguousarray(np.rot90(wide)), 80)
    masks["wide_rot"] = np.zeros((80, 48), np.uint8)
    info = sd.open_dataset(write_voc(tmp_path / "syn", images, masks, class_names=["bg", "x"]))
    g = sp.find_groups(info)
    expected = sorted(
        [sorted([f"p{n}_orig", f"p{n}_rot", f"p{n}_flip"]) for n in range(3)]
        + [[f"p{n}_orig"] for n in range(3, 6)]
        + [["wide", "wide_rot"]],
        key=lambda x: x[0],
    )
    assert g.copy_groups == expected
    links = {(lk.a, lk.b): lk.transform for lk in g.links if lk.kind == "copy"}
    # image(a) ~ dihedral(image(b), k): p0_flip = dihedral(p0_orig, 4), so p0_flip ~ T(p0_orig) with k = 4.
    assert links[("p0_flip", "p0_orig")] == 4


def test_groups_json_round_trip_and_validation(tmp_path: Path, groups: sp.Groups) -> None:
    path = tmp_path / "g.json"
    sp.save_groups(groups, path)
    doc = json.loads(path.read_text())
    assert doc["groups"] == groups.groups and doc["copy_groups"] == groups.copy_groups
    assert sp.load_groups(path) == groups.groups
    assert sp.load_groups(path, key="copy_groups") == groups.copy_groups
    path.write_text(json.dumps({"groups": groups.groups}))
    with pytest.raises(sd.DatasetError, match=r"g\.json: groups JSON: expected \{'copy_groups'"):
        sp.load_groups(path, key="copy_groups")
    with pytest.raises(sd.DatasetError, match="more than one group"):
        sp.groups_from_json({"groups": [["a", "b"], ["b"]]})
    with pytest.raises(sd.DatasetError, match="expected"):
        sp.groups_from_json({"groups": "a"})


def test_cli_groups_writes_the_json(tmp_path: Path, capsys: pytest.CaptureFixture[str], groups: sp.Groups) -> None:
    out = tmp_path / "groups.json"
    assert main(["data", "groups", str(SAMPLE), "--json", str(out)]) == 0
    assert sp.load_groups(out) == groups.groups
    assert f"{len(groups.groups)} groups of 72 images" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- splits


def test_official_split_sizes_disjointness_and_seeding(info: sd.DatasetInfo) -> None:
    a = sp.make_split(info, "official", seed=0)
    assert sorted(a["test"]) == sorted(info.split_lists["test"])
    assert len(a["val"]) == 5 and len(a["train"]) == 43  # 48 training images, 9:1
    assert sorted(a["train"] + a["val"] + a["test"]) == list(info.ids)
    assert a == sp.make_split(info, "official", seed=0)
    b = sp.make_split(info, "official", seed=1)
    assert b["test"] == a["test"] and b["val"] != a["val"]
    assert len(sp.make_split(info, "official", val_fraction=0.25)["val"]) == 12
    with pytest.raises(ValueError, match="split kind"):
        sp.make_split(info, "random")  # type: ignore[arg-type]


def test_grouped_split_keeps_groups_together(info: sd.DatasetInfo, groups: sp.Groups) -> None:
    split = sp.make_split(info, "grouped", seed=0, groups=groups.groups)
    side = {s: name for name, ids in split.items() for s in ids}
    assert sorted(side) == list(info.ids)
    assert all(len({side[s] for s in g}) == 1 for g in groups.groups)
    # Test size and make-up follow the official test set (24 images, 7 of them leaked in the sample).
    assert abs(len(split["test"]) - 24) <= 4 and split["val"]
    assert split == sp.make_split(info, "grouped", seed=0, groups=groups.groups)
    assert split != sp.make_split(info, "grouped", seed=5, groups=groups.groups)
    # Without precomputed groups it detects them itself and gets the same split.
    assert sp.make_split(info, "grouped", seed=0) == split


def test_leaky_split_puts_the_copies_of_each_test_picture_back_into_training(info: sd.DatasetInfo,
                                                                             groups: sp.Groups) -> None:
    grouped = sp.make_split(info, "grouped", seed=0, groups=groups.groups)
    leaky = sp.make_split(info, "leaky", seed=0, groups=groups.groups, copy_groups=groups.copy_groups)
    # Every id still listed once; validation untouched; test is a subset of the grouped test set.
    assert sorted(i for ids in leaky.values() for i in ids) == list(info.ids)
    assert leaky["val"] == grouped["val"] and set(leaky["test"]) < set(grouped["test"])
    # One image per copy group of the grouped test set stays; the rest of that group is in training.
    test_copy_groups = [g for g in groups.copy_groups if set(g) & set(grouped["test"])]
    assert len(leaky["test"]) == len(test_copy_groups)
    for g in test_copy_groups:
        assert len(set(g) & set(leaky["test"])) == 1
        assert set(g) - set(leaky["test"]) <= set(leaky["train"])
    moved = set(grouped["test"]) - set(leaky["test"])
    assert moved and moved <= set(leaky["train"])
    # Training keeps the grouped split's size: as many grouped-training images dropped, as whole groups.
    assert len(leaky["train"]) == len(grouped["train"]) and len(leaky["unused"]) == len(moved)
    assert set(leaky["unused"]) <= set(grouped["train"])
    for g in groups.groups:
        assert not set(g) & set(leaky["unused"]) or set(g) & set(grouped["train"]) <= set(leaky["unused"])
    assert leaky == sp.make_split(info, "leaky", seed=0)  # detects the same groups itself
    with pytest.raises(sd.DatasetError, match="copy groups"):
        sp.make_split(info, "leaky", seed=0, groups=groups.groups)


def test_grouped_split_on_user_data_without_duplicates_falls_back_with_a_warning(tmp_path: Path) -> None:
    images, masks = {}, {}
    for n in range(40):
        images[f"i{n:02d}"] = texture(200 + n, 32, 32)
        m = np.zeros((32, 32), np.uint8)
        m[:4, :4] = 1 + n % 2
        masks[f"i{n:02d}"] = m
    info = sd.open_dataset(write_voc(tmp_path / "u", images, masks, class_names=["bg", "a", "b"]))
    with pytest.warns(UserWarning, match="no near-duplicate groups"):
        split = sp.make_split(info, "grouped", seed=0, val_fraction=0.2)
    assert len(split["test"]) == 4  # 10 % without a test list
    assert len(split["val"]) == 7 or len(split["val"]) == 8
    assert sorted(split["train"] + split["val"] + split["test"]) == list(info.ids)
    # Class balance: both classes reach the test side.
    assert {int(s[1:]) % 2 for s in split["test"]} == {0, 1}
    with pytest.warns(UserWarning, match="no ImageSets"):
        official = sp.make_split(info, "official", seed=0)
    assert len(official["test"]) == 4


def test_voc_lists_are_used_for_the_official_split(tmp_path: Path) -> None:
    images = {f"i{n}": texture(n, 16, 16) for n in range(6)}
    masks = {k: np.zeros((16, 16), np.uint8) for k in images}
    info = sd.open_dataset(write_voc(tmp_path / "v", images, masks, class_names=["bg", "x"],
                                     lists={"trainval": ["i0", "i1", "i2", "i3", "i4"], "test": ["i5"]}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split = sp.make_split(info, "official", seed=0, val_fraction=0.2)
    assert split["test"] == ["i5"] and len(split["val"]) == 1 and len(split["train"]) == 4


# ---------------------------------------------------------------------------------------------- audit


def test_audit_of_the_sample(info: sd.DatasetInfo, groups: sp.Groups) -> None:
    a = sp.audit(info, groups)
    leak = a["official_test_leakage"]
    assert leak["test_images"] == 24 and leak["with_a_copy_in_training"] == len(SAMPLE_LEAKED_TEST) == 7
    dups = {tuple(d["ids"]): d for d in a["exact_duplicates"]}
    assert set(dups) == set(EXACT_DUPLICATE_PAIRS) | {("test/000301", "test/000305")}
    assert all(d["same_copy_group"] and d["mask_pixels_differing"] == 580 for d in dups.values())
    assert set(a["copy_groups"]["transforms_between_copies"]) <= {"identity", "rot90", "rot180", "rot270"}
    md = a["mask_disagreement_between_copies"]
    assert md["pairs"] == sum(len(g) * (len(g) - 1) // 2 for g in groups.copy_groups)
    assert 0 < md["fraction_of_pairs_disagreeing"] < 1
    assert 0 < md["pixel_fraction_disagreeing_among_disagreeing_pairs"]["median"] < 0.2
    assert a["splits"]["grouped_groups_crossing_sides"] == 0


# ---------------------------------------------------------------------------------------------- full data


@pytest.mark.skipif(not FULL.is_dir(), reason=FULL_REASON)
def test_committed_groups_cover_the_full_dataset() -> None:
    path = AUDIT_DIR / "neu_seg_groups.json"
    if not path.is_file():
        pytest.skip(f"{path} not written yet (smelib data groups {FULL} --json {path})")
    info = sd.open_dataset(FULL)
    doc = json.loads(path.read_text())
    for key in ("groups", "copy_groups"):
        flat = [s for g in doc[key] for s in g]
        assert sorted(flat) == list(info.ids) and len(flat) == 4470
    group_of = {s: i for i, g in enumerate(doc["copy_groups"]) for s in g}
    for a, b in EXACT_DUPLICATE_PAIRS:
        assert group_of[a] == group_of[b]
    sizes = sorted({len(g) for g in doc["copy_groups"]})
    assert sizes == [1, 4, 8]
    split = sp.make_split(info, "grouped", seed=0, groups=doc["groups"])
    side = {s: k for k, ids in split.items() for s in ids}
    assert all(len({side[s] for s in g}) == 1 for g in doc["groups"])
    assert abs(len(split["test"]) - 840) <= 10


@pytest.mark.skipif(not FULL.is_dir(), reason=FULL_REASON)
def test_committed_audit_numbers_are_consistent() -> None:
    path = AUDIT_DIR / "audit.json"
    if not path.is_file():
        pytest.skip(f"{path} not written yet")
    doc = json.loads(path.read_text())
    a = doc["audit"]
    assert doc["num_images"] == 4470 and a["copy_groups"]["count"] == sum(
        int(v) for v in a["copy_groups"]["size_histogram"].values()
    )
    assert 0 < a["official_test_leakage"]["with_a_copy_in_training"] <= 840
    assert a["splits"]["grouped_groups_crossing_sides"] == 0
    assert len(a["exact_duplicates"]) == 4 and all(d["same_copy_group"] for d in a["exact_duplicates"])
    assert doc["provenance"]["git_commit"] and doc["provenance"]["command"].startswith("smelib data check")
