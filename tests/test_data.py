"""Tests of smelib.data: readers, layouts, checks, conversion, download, datasets and loaders."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _data_helpers import FULL, FULL_REASON, SAMPLE, http_server, texture, write_native, write_voc, zip_of
from smelib import data as sd
from smelib.data.augment import Augment
from smelib.cli import main
from smelib.config import resolve
from smelib.data.convert import convert_to_voc, native_to_voc_id
from smelib.data.download import NEU_SEG_COMMIT, download_neu_seg, read_sha256_list
from smelib.data.splits import make_split


@pytest.fixture(scope="module")
def sample_info() -> sd.DatasetInfo:
    return sd.open_dataset(SAMPLE)


def _user_voc(tmp_path: Path) -> Path:
    """Three classes, images of three sizes, gray and RGB, palette masks with 255 borders, lists, names."""
    images, masks = {}, {}
    rng = np.random.default_rng(0)
    for n, (h, w) in enumerate([(40, 60), (52, 30), (40, 60), (33, 33)]):
        stem = f"img{n}"
        gray = texture(n, h, w)
        images[stem] = gray if n % 2 == 0 else np.stack([gray, gray // 2, 255 - gray], -1)
        m = rng.integers(0, 3, size=(h, w)).astype(np.uint8)
        m[0, :] = 255
        masks[stem] = m
    return write_voc(
        tmp_path / "user", images, masks, class_names=["bg", "rust", "dent"],
        lists={"train": ["img0", "img1"], "val": ["img2"], "test": ["img3"]}, palette_masks=True,
    )


# ---------------------------------------------------------------------------------------------- layouts


def test_native_sample_is_found_with_ids_splits_and_names(sample_info: sd.DatasetInfo) -> None:
    info = sample_info
    assert info.layout == "native"
    assert info.class_names == sd.NEU_SEG_CLASSES and info.num_classes == 4 and info.is_neu_seg
    assert len(info) == 72
    assert len(info.split_lists["training"]) == 48 and len(info.split_lists["test"]) == 24
    assert all(i.split("/")[0] in ("training", "test") and len(i.split("/")[1]) == 6 for i in info.ids)
    assert list(info.ids) == sorted(info.ids)
    sid = "test/000050"
    assert info.image_paths[sid] == SAMPLE / "images" / "test" / "000050.jpg"
    assert info.mask_paths[sid] == SAMPLE / "annotations" / "test" / "000050.png"


def test_sample_files_match_their_sha256_list() -> None:
    sums = read_sha256_list(SAMPLE / "SHA256SUMS")
    assert len(sums) == 144
    for rel, digest in sums.items():
        assert hashlib.sha256((SAMPLE / rel).read_bytes()).hexdigest() == digest, rel


def test_packaged_sha_list_covers_full_dataset_and_agrees_with_sample() -> None:
    packaged = read_sha256_list(Path(sd.dataset.__file__).with_name("neu_seg_sha256.txt"))
    data_entries = [k for k in packaged if k.startswith(("images/", "annotations/"))]
    assert len(data_entries) == 2 * 4470
    # The sample is a byte-identical subset of the full dataset.
    for rel, digest in read_sha256_list(SAMPLE / "SHA256SUMS").items():
        assert packaged[rel] == digest, rel


def test_read_image_gray_replicated_and_single_channel(sample_info: sd.DatasetInfo) -> None:
    path = sample_info.image_paths["training/000231"]
    x3 = sd.read_image(path)
    x1 = sd.read_image(path, channels=1)
    assert x3.dtype == torch.uint8 and x3.shape == (3, 200, 200)
    assert x1.shape == (1, 200, 200)
    assert torch.equal(x3[0], x3[1]) and torch.equal(x3[0], x3[2]) and torch.equal(x3[0], x1[0])
    rgb = np.array(Image.open(path).convert("RGB"))
    assert torch.equal(x3.permute(1, 2, 0), torch.from_numpy(rgb))


def test_read_mask_values_are_class_indices(sample_info: sd.DatasetInfo) -> None:
    values = set()
    for sid in sample_info.ids:
        m = sd.read_mask(sample_info.mask_paths[sid])
        assert m.dtype == torch.uint8 and m.shape == (200, 200)
        values |= set(torch.unique(m).tolist())
    assert values == {0, 1, 2, 3}


def test_check_sample_reports_fractions_and_defect_sizes(sample_info: sd.DatasetInfo) -> None:
    r = sd.check_dataset(sample_info)
    assert r["num_images"] == 72 and r["image_sizes"] == {"200x200": 72} and r["image_kinds"]["gray"] == 72
    assert sum(r["class_pixels"].values()) == 72 * 200 * 200
    assert abs(sum(r["class_pixel_fraction"].values()) - 1) < 1e-9
    assert r["class_pixel_fraction"]["background"] > 0.8
    for name in ("inclusion", "patches", "scratches"):
        st = r["defect_pixels_per_image"][name]
        assert st["n_images"] == r["images_containing"][name] > 0
        assert st["min"] <= st["q1"] <= st["median"] <= st["q3"] <= st["max"]
    assert 0.3 < r["pixel_mean"] < 0.7 and 0.1 < r["pixel_std"] < 0.4


@pytest.mark.skipif(not FULL.is_dir(), reason=FULL_REASON)
def test_neu_seg_mean_std_constants_match_full_training_images() -> None:
    info = sd.open_dataset(FULL)
    total = sq = 0.0
    n = 0
    for sid in info.split_lists["training"]:
        x = sd.read_image(info.image_paths[sid], 1).numpy().astype(np.float64) / 255.0
        total, sq, n = total + x.sum(), sq + (x * x).sum(), n + x.size
    mean = total / n
    assert abs(mean - sd.NEU_SEG_MEAN[0]) < 1e-4
    assert abs(np.sqrt(sq / n - mean**2) - sd.NEU_SEG_STD[0]) < 1e-4


def test_convert_to_voc_copies_bytes_and_keeps_the_official_split(tmp_path: Path, sample_info: sd.DatasetInfo) -> None:
    voc = convert_to_voc(SAMPLE, tmp_path / "voc", seed=3)
    assert voc == tmp_path / "voc" / "VOCdevkit" / "VOC2007"
    for sid in ("training/000231", "test/000001"):
        vid = native_to_voc_id(sid)
        assert (voc / "JPEGImages" / f"{vid}.jpg").read_bytes() == sample_info.image_paths[sid].read_bytes()
        assert (voc / "SegmentationClass" / f"{vid}.png").read_bytes() == sample_info.mask_paths[sid].read_bytes()
    info = sd.open_dataset(tmp_path / "voc")
    assert info.layout == "voc" and info.class_names == sd.NEU_SEG_CLASSES and len(info) == 72
    native = make_split(sample_info, "official", seed=3)
    converted = make_split(info, "official", seed=3)
    for side in ("train", "val", "test"):
        assert converted[side] == sorted(native_to_voc_id(i) for i in native[side])
    assert len(converted["test"]) == 24 and len(converted["val"]) == 5 and len(converted["train"]) == 43
    # Also accepted: a root that directly holds JPEGImages/.
    assert sd.open_dataset(voc).ids == info.ids


def test_convert_refuses_a_non_empty_destination(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(sd.DatasetError, match="not an empty folder"):
        convert_to_voc(SAMPLE, out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_user_voc_with_sizes_colours_palette_masks_and_ignore(tmp_path: Path) -> None:
    root = _user_voc(tmp_path)
    info = sd.open_dataset(root)
    assert info.class_names == ("bg", "rust", "dent") and not info.is_neu_seg
    assert info.split_lists["val"] == ("img2",)
    r = sd.check_dataset(info)
    assert r["image_sizes"] == {"60x40": 2, "30x52": 1, "33x33": 1}
    assert r["image_kinds"] == {"gray": 2, "colour": 2}
    assert r["ignore_pixels"] == 60 + 30 + 60 + 33
    ds = sd.InMemorySegDataset(info)
    x, y, sid = ds[1]
    assert sid == "img1" and x.shape == (3, 52, 30) and y.shape == (52, 30) and y.dtype == torch.int64
    assert set(torch.unique(y).tolist()) <= {0, 1, 2, 255}
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=sd.pad_collate)
    images, masks = next(iter(loader))
    assert images.shape == (4, 3, 52, 60) and masks.shape == (4, 52, 60) and ds.ids == ["img0", "img1", "img2", "img3"]
    # Padding: image 0 (40 x 60) is padded below with 0 in the image and 255 in the mask.
    assert bool((masks[0, 40:] == 255).all()) and bool((images[0, :, 40:] == 0).all())
    assert torch.equal(masks[1, :52, :30], ds[1][1]) and bool((masks[1, :, 30:] == 255).all())


def test_voc_without_names_uses_num_classes_or_infers_it(tmp_path: Path) -> None:
    m = np.zeros((8, 8), np.uint8)
    m[2:4, 2:4] = 4
    root = write_voc(tmp_path / "v", {"a": texture(1, 8, 8)}, {"a": m})
    info = sd.open_dataset(root)
    assert info.num_classes == 0
    r = sd.check_dataset(info)
    assert r["num_classes"] == 5 and r["num_classes_inferred"]
    assert sd.open_dataset(root, num_classes=5).class_names == tuple(f"class_{i}" for i in range(5))
    with pytest.raises(sd.DatasetError, match="number of classes unknown"):
        sd.load_data(_config(root))


# ---------------------------------------------------------------------------------------------- bad input


def _one_pair(tmp_path: Path, img: np.ndarray | None = None, mask: np.ndarray | None = None) -> Path:
    img = texture(0, 16, 16) if img is None else img
    mask = np.zeros((16, 16), np.uint8) if mask is None else mask
    images = {"a": img, "b": texture(1, 16, 16)}
    masks = {"a": mask, "b": np.zeros((16, 16), np.uint8)}
    return write_voc(tmp_path / "bad", images, masks, class_names=["bg", "defect"])


def test_missing_mask_is_named(tmp_path: Path) -> None:
    root = _one_pair(tmp_path)
    (root / "VOCdevkit/VOC2007/SegmentationClass/a.png").unlink()
    with pytest.raises(sd.DatasetError, match=r"a\.png.*no mask|no mask.*a\.png"):
        sd.open_dataset(root)


def test_missing_mask_native_is_named(tmp_path: Path) -> None:
    root = write_native(tmp_path / "n", {"training/000001": (texture(0, 16, 16), np.zeros((16, 16)))})
    (root / "annotations/training/000001.png").unlink()
    with pytest.raises(sd.DatasetError) as err:
        sd.open_dataset(root)
    assert "000001.jpg" in str(err.value) and "no mask" in str(err.value)


def test_size_mismatch_is_named(tmp_path: Path) -> None:
    root = _one_pair(tmp_path, mask=np.zeros((16, 12), np.uint8))
    info = sd.open_dataset(root)
    with pytest.raises(sd.DatasetError, match=r"a\.png: mask is 12x16 \(WxH\) but the image a\.png is 16x16"):
        sd.check_dataset(info)
    with pytest.raises(sd.DatasetError, match="mask is 12x16"):
        sd.InMemorySegDataset(info)


def test_value_above_num_classes_is_named(tmp_path: Path) -> None:
    m = np.zeros((16, 16), np.uint8)
    m[3, 3] = 7
    m[4, 4] = 255  # ignore is allowed
    info = sd.open_dataset(_one_pair(tmp_path, mask=m))
    with pytest.raises(sd.DatasetError, match=r"a\.png: mask values 7 are >= num_classes=2"):
        sd.check_dataset(info)
    ds = sd.StreamingSegDataset(info, ["b"])
    assert ds[0][1].shape == (16, 16)  # the good sample is fine; the bad one fails when read
    with pytest.raises(sd.DatasetError, match="mask values 7"):
        sd.StreamingSegDataset(info, ["a"])[0]


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    root = _one_pair(tmp_path)
    bad = root / "VOCdevkit/VOC2007/JPEGImages/a.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(sd.DatasetError, match=r"a\.png: cannot be read as an image"):
        sd.check_dataset(sd.open_dataset(root))


def test_truncated_jpeg_is_named(tmp_path: Path, sample_info: sd.DatasetInfo) -> None:
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(sample_info.image_paths["test/000001"].read_bytes()[:500])
    with pytest.raises(sd.DatasetError, match=r"cut\.jpg: cannot be read"):
        sd.read_image(bad)


def test_empty_folders_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(sd.DatasetError, match="not a dataset folder"):
        sd.open_dataset(empty)
    (empty / "images" / "training").mkdir(parents=True)
    (empty / "annotations" / "training").mkdir(parents=True)
    with pytest.raises(sd.DatasetError, match="no images"):
        sd.open_dataset(empty)
    voc = tmp_path / "voc" / "VOCdevkit" / "VOC2007"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "SegmentationClass").mkdir()
    with pytest.raises(sd.DatasetError, match="no images"):
        sd.open_dataset(tmp_path / "voc")
    with pytest.raises(sd.DatasetError, match="no such folder"):
        sd.open_dataset(tmp_path / "nowhere")


def test_rgb_colour_mask_is_refused_with_how_to_convert(tmp_path: Path) -> None:
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[4:8, 4:8] = (128, 0, 0)
    root = _one_pair(tmp_path)
    path = root / "VOCdevkit/VOC2007/SegmentationClass/a.png"
    Image.fromarray(colour, mode="RGB").save(path)
    with pytest.raises(sd.DatasetError) as err:
        sd.check_dataset(sd.open_dataset(root))
    msg = str(err.value)
    assert "a.png" in msg and "RGB colour mask" in msg and "colour_mask_to_index" in msg
    # The documented conversion.
    index = sd.colour_mask_to_index(colour, [(0, 0, 0), (128, 0, 0)])
    assert index.dtype == np.uint8 and index.sum() == 16 and index[5, 5] == 1
    Image.fromarray(index).save(path)
    assert sd.check_dataset(sd.open_dataset(root))["images_containing"]["defect"] == 1
    with pytest.raises(sd.DatasetError, match=r"colour \(128, 0, 0\).*not in the palette"):
        sd.colour_mask_to_index(colour, [(0, 0, 0)])


def test_gray_rgb_mask_is_read_as_indices(tmp_path: Path) -> None:
    m = np.zeros((8, 8), np.uint8)
    m[1, 1] = 2
    path = tmp_path / "m.png"
    Image.fromarray(np.stack([m] * 3, -1), mode="RGB").save(path)
    assert torch.equal(sd.read_mask(path), torch.from_numpy(m))


def test_several_problems_are_listed_first_one_first(tmp_path: Path) -> None:
    m = np.zeros((16, 16), np.uint8)
    m[0, 0] = 9
    root = write_voc(tmp_path / "two", {"a": texture(0, 16, 16), "b": texture(1, 16, 16)},
                     {"a": m, "b": m}, class_names=["bg", "x"])
    with pytest.raises(sd.DatasetError) as err:
        sd.check_dataset(sd.open_dataset(root))
    text = str(err.value)
    assert text.startswith("2 problem(s)") and text.index("a.png") < text.index("b.png")


# ---------------------------------------------------------------------------------------------- datasets


def test_in_memory_dataset_items_are_normalised_tensors(sample_info: sd.DatasetInfo) -> None:
    ids = list(sample_info.ids[:6])
    ds = sd.InMemorySegDataset(sample_info, ids)
    x, y, sid = ds[2]
    assert sid == ids[2] and x.dtype == torch.float32 and x.shape == (3, 200, 200)
    assert y.dtype == torch.int64 and y.shape == (200, 200)
    raw = sd.read_image(sample_info.image_paths[sid]).float() / 255
    mean = torch.tensor(sd.NEU_SEG_MEAN).view(3, 1, 1)
    std = torch.tensor(sd.NEU_SEG_STD).view(3, 1, 1)
    assert torch.allclose(x * std + mean, raw, atol=1e-6)
    assert torch.equal(y, sd.read_mask(sample_info.mask_paths[sid]).long())
    # Gray images are stored once, not three times.
    assert ds.images[0].shape == (1, 200, 200)
    one = sd.InMemorySegDataset(sample_info, ids, channels=1, mean=[0.5], std=[0.25])
    x1 = one[2][0]
    assert x1.shape == (1, 200, 200) and torch.allclose(x1 * 0.25 + 0.5, raw[:1], atol=1e-6)


def test_streaming_equals_in_memory(sample_info: sd.DatasetInfo) -> None:
    ids = list(sample_info.ids[-5:])
    a = sd.InMemorySegDataset(sample_info, ids)
    b = sd.StreamingSegDataset(sample_info, ids)
    assert len(a) == len(b) == 5
    for i in range(5):
        xa, ya, ia = a[i]
        xb, yb, ib = b[i]
        assert ia == ib and torch.equal(xa, xb) and torch.equal(ya, yb)


def test_transform_is_seeded_per_sample_and_epoch(sample_info: sd.DatasetInfo) -> None:
    aug = Augment(hflip=0.5, vflip=0.5, rot90=True, crop=128)
    ids = list(sample_info.ids[:4])
    ds = sd.InMemorySegDataset(sample_info, ids, transform=aug, seed=7)
    first = [ds[i][0] for i in range(4)]
    again = [ds[i][0] for i in range(4)]
    assert all(torch.equal(p, q) for p, q in zip(first, again))
    assert first[0].shape == (3, 128, 128)
    ds.set_epoch(1)
    later = [ds[i][0] for i in range(4)]
    assert any(not torch.equal(p, q) for p, q in zip(first, later))


def _config(root: Path, split: str = "official", **data: object) -> dict:
    return resolve({"data": {"root": str(root), "split": split, "augment": None, **data}})


def test_loader_with_a_worker_matches_the_main_process() -> None:
    # The training path: the seeded view, the epoch's batch order, padding collation, with and without a worker.
    cfg = _config(SAMPLE, augment={"hflip": 0.5, "rot90": True}, limit=6)
    bundle = sd.load_data(cfg, seed=1)
    view = sd.TrainView(bundle.train, None, seed=1, size=None)
    batches = [[(0, i) for i in b] for b in sd.epoch_batches(len(view), 3, seed=1, epoch=0)]

    def run(workers: int) -> list:
        return list(torch.utils.data.DataLoader(view, batch_sampler=batches, num_workers=workers,
                                                collate_fn=sd.pad_collate))

    a, b = run(0), run(1)
    assert len(a) == 2 and all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert sd.epoch_batches(6, 3, seed=1, epoch=0) != sd.epoch_batches(6, 3, seed=2, epoch=0)


def test_load_data_official_and_grouped(sample_info: sd.DatasetInfo) -> None:
    official = sd.load_data(_config(SAMPLE))
    assert isinstance(official.test, sd.InMemorySegDataset) and len(official.test) == 24
    assert set(official.test.ids) == set(sample_info.split_lists["test"])
    assert len(official.val) == 5 and official.class_names == list(sample_info.class_names)
    grouped = sd.load_data(_config(SAMPLE, "grouped"))
    train, gtest = grouped.train, grouped.test
    assert not set(train.ids) & set(gtest.ids)
    # The exact-duplicate copies of test/000301 all sit on one side of the grouped split.
    side = "train" if "test/000301" in train.ids else "test" if "test/000301" in gtest.ids else "val"
    other = {"train": train.ids, "test": gtest.ids}.get(side)
    if other is not None:
        assert {"test/000305", "training/001281", "training/003025"} <= set(other)
    assert sum(len(d) for d in (grouped.train, grouped.val, grouped.test)) == 72


# ---------------------------------------------------------------------------------------------- download


def _sample_zip_server(tmp_path: Path, **kw: str) -> Path:
    site = tmp_path / "site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "neu.zip").write_bytes(zip_of(SAMPLE, f"NEU_Seg-{NEU_SEG_COMMIT}", **kw))
    return site


def test_download_verifies_and_unpacks(tmp_path: Path) -> None:
    site = _sample_zip_server(tmp_path)
    dest = tmp_path / "dest"
    with http_server(site) as base:
        out = download_neu_seg(dest, url=f"{base}/neu.zip", sha_list=SAMPLE / "SHA256SUMS")
    assert out == dest
    for rel in read_sha256_list(SAMPLE / "SHA256SUMS"):
        assert (dest / rel).read_bytes() == (SAMPLE / rel).read_bytes()
    assert not (dest / "README.md").exists() and (dest / "SHA256SUMS").is_file()
    assert len(sd.open_dataset(dest)) == 72
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]  # no temp folder left behind


def test_download_refuses_a_tampered_archive(tmp_path: Path) -> None:
    site = _sample_zip_server(tmp_path, tamper="images/test/000050.jpg")
    dest = tmp_path / "dest"
    with http_server(site) as base, pytest.raises(sd.DatasetError) as err:
        download_neu_seg(dest, url=f"{base}/neu.zip", sha_list=SAMPLE / "SHA256SUMS")
    assert "images/test/000050.jpg: SHA-256 mismatch" in str(err.value) and "nothing written" in str(err.value)
    assert not dest.exists() or not any(dest.iterdir())


def test_download_refuses_missing_files_bad_zips_and_full_destinations(tmp_path: Path) -> None:
    site = _sample_zip_server(tmp_path, drop="annotations/training/000231.png")
    (site / "notzip.zip").write_bytes(b"<html>rate limited</html>")
    with http_server(site) as base:
        with pytest.raises(sd.DatasetError, match="annotations/training/000231.png: listed .* but missing"):
            download_neu_seg(tmp_path / "d1", url=f"{base}/neu.zip", sha_list=SAMPLE / "SHA256SUMS")
        with pytest.raises(sd.DatasetError, match="not a zip archive"):
            download_neu_seg(tmp_path / "d2", url=f"{base}/notzip.zip", sha_list=SAMPLE / "SHA256SUMS")
        with pytest.raises(sd.DatasetError, match="download failed"):
            download_neu_seg(tmp_path / "d3", url=f"{base}/absent.zip", sha_list=SAMPLE / "SHA256SUMS")
        full = tmp_path / "full"
        full.mkdir()
        (full / "x").write_text("x")
        with pytest.raises(sd.DatasetError, match="not an empty folder"):
            download_neu_seg(full, url=f"{base}/neu.zip", sha_list=SAMPLE / "SHA256SUMS")
        # The packaged list is for the full dataset: the sample archive lacks thousands of its files.
        with pytest.raises(sd.DatasetError, match="missing from the archive"):
            download_neu_seg(tmp_path / "d4", url=f"{base}/neu.zip")


def test_cli_download_against_local_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = _sample_zip_server(tmp_path)
    with http_server(site) as base:
        rc = main(["data", "download", "--dest", str(tmp_path / "d"), "--url", f"{base}/neu.zip",
                   "--sha-list", str(SAMPLE / "SHA256SUMS")])
        assert rc == 0 and "verified and unpacked 145 files" in capsys.readouterr().out
        site2 = _sample_zip_server(tmp_path / "t", tamper="annotations/test/000001.png")
    with http_server(site2) as base:
        rc = main(["data", "download", "--dest", str(tmp_path / "e"), "--url", f"{base}/neu.zip",
                   "--sha-list", str(SAMPLE / "SHA256SUMS")])
    assert rc == 2 and "SHA-256 mismatch" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_check_json_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "check", str(SAMPLE), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_images"] == 72 and report["num_classes"] == 4
    assert main(["data", "check", str(SAMPLE), "--num-classes", "3"]) == 2
    err = capsys.readouterr().err
    assert "mask values 3 are >= num_classes=3" in err and err.startswith("smelib data: error:")


def test_cli_check_audit_writes_provenance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "audit.json"
    assert main(["data", "check", str(SAMPLE), "--audit", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "official test images with a copy in training: 7 of 24" in printed
    doc = json.loads(out.read_text())
    assert doc["audit"]["official_test_leakage"]["with_a_copy_in_training"] == 7
    assert doc["provenance"]["command"].startswith("smelib data check") and doc["provenance"]["wall_seconds"] > 0


def test_cli_convert_then_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "convert", str(SAMPLE), "--to", "voc", "--out", str(tmp_path / "v")]) == 0
    assert main(["data", "check", str(tmp_path / "v")]) == 0
    assert "voc layout, 72 images" in capsys.readouterr().out
    assert main(["data", "convert", str(SAMPLE), "--to", "voc", "--out", str(tmp_path / "v")]) == 2
    assert main(["data", "convert", str(tmp_path / "v"), "--out", str(tmp_path / "w")]) == 2
    assert "already in the VOC layout" in capsys.readouterr().err


def test_no_warnings_when_reading_the_sample(sample_info: sd.DatasetInfo) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sd.InMemorySegDataset(sample_info, list(sample_info.ids[:3]))[0]
