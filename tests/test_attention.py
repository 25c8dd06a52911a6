"""Fast tests of smelib.study.attention on an untrained lite SME-DeepLabV3+, and of its book helpers (figures on the
bundled sample, statistics on hand-made masks)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from smelib.study.attention import (  # noqa: E402
    STAT_KEYS, attention_figure, attention_maps, channel_attention_figure, collect_attention_stats,
    defect_attention_stats, defect_class, ela_map, iter_batches, load_batch, mass_vs_area_figure, pearson_spearman,
    pick_by_class, size_correlation_table, spatial_mass, to_gray, upsample_map,
)
from smelib.data import open_dataset  # noqa: E402
from smelib.models.registry import build  # noqa: E402
from smelib.settings import sample_root  # noqa: E402
from smelib.palette import CLASS_COLORS
from smelib.data import NEU_SEG_CLASSES  # noqa: E402


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build("sme_deeplabv3plus_lite", num_classes=4).eval()


def test_shapes_and_ranges(model: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 64, 64)
    maps = attention_maps(model, x)
    assert maps["ela"].shape == (2, 16, 16)
    assert maps["msaa_spatial"].shape == (2, 8, 8)
    assert maps["msaa_channel"].shape == (2, model.context.fusion.dim)
    assert maps["logits"].shape == (2, 4, 64, 64)
    for key in ("ela", "msaa_spatial", "msaa_channel"):
        assert float(maps[key].min()) > 0 and float(maps[key].max()) < 1
    # hooks removed, model output unchanged
    assert not model.low_attention._forward_hooks
    torch.testing.assert_close(maps["logits"], model(x))


def test_ela_map_matches_module(model: torch.nn.Module) -> None:
    feat = torch.randn(1, model.low_attention.conv.in_channels, 10, 12)
    a_h, a_w = model.low_attention.attention(feat)
    m = ela_map(a_h, a_w)
    torch.testing.assert_close(m, (model.low_attention(feat) / feat).mean(dim=1), rtol=1e-4, atol=1e-5)
    top = ela_map(a_h, a_w, top_k=2)
    assert top.shape == (1, 10, 12)


def test_mass_and_upsample() -> None:
    m = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])
    assert float(spatial_mass(m)) == pytest.approx(0.75)
    assert float(spatial_mass(m, level=0.5)) == pytest.approx(0.75)
    assert upsample_map(m, (8, 8)).shape == (1, 8, 8)


def test_rejects_models_without_modules() -> None:
    with pytest.raises(TypeError):
        attention_maps(torch.nn.Conv2d(3, 4, 1), torch.randn(1, 3, 8, 8))


# ---- book helpers (the second half of smelib/study/attention.py) ----------------------------------------


def _masks() -> torch.Tensor:
    m = torch.zeros(2, 8, 8, dtype=torch.long)
    m[0, :2, :2] = 1  # 4 px of class 1
    m[0, 4, 4] = 2  # 1 px of class 2
    m[0, 7, :] = 255  # ignored
    m[1, :, :4] = 3  # half the image is class 3
    return m


def test_defect_class() -> None:
    m = _masks()
    assert defect_class(m[0]) == 1
    assert defect_class(m[1]) == 3
    assert defect_class(torch.full((4, 4), 255)) == 0
    assert defect_class(torch.zeros(4, 4, dtype=torch.long)) == 0


def test_defect_attention_stats_inside_outside() -> None:
    m = _masks()
    ela = torch.full((2, 2, 2), 0.5)
    sa = torch.zeros(2, 8, 8)
    sa[1, :, :4] = 1.0  # image 1: attention exactly on its defect (same size as the mask: no resampling blur)
    s = defect_attention_stats({"ela": ela, "msaa_spatial": sa}, m)
    assert set(s) == set(STAT_KEYS)
    assert s["cls"] == [1, 3]
    assert s["area"] == pytest.approx([5 / 64, 0.5])
    assert s["sa_in"][1] == pytest.approx(1.0) and s["sa_out"][1] == pytest.approx(0.0)
    assert s["sa_mass"] == pytest.approx([0.0, 0.5])
    assert s["ela_in"] == pytest.approx([0.5, 0.5]) and s["ela_mass"] == pytest.approx([0.5, 0.5])


def test_pearson_spearman() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    p, s = pearson_spearman(a, a ** 3)
    assert s == pytest.approx(1.0) and 0.9 < p < 1.0
    p, s = pearson_spearman(a, -a)
    assert (p, s) == pytest.approx((-1.0, -1.0))


def test_size_correlation_table_rows() -> None:
    stats = {
        "area": np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]),
        "cls": np.array([1, 1, 1, 2, 2, 2, 3]),
        "sa_mass": np.array([0.3, 0.2, 0.1, 0.1, 0.2, 0.3, 0.5]),
        "ela_mass": np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]),
    }
    t = size_correlation_table(stats, NEU_SEG_CLASSES)
    rows = t.to_dicts()
    # class 3 has 1 image (< 3): left out, for both attentions
    assert [(r["attention"], r["images"], r["n"]) for r in rows] == [
        ("MSAA spatial attention", "all test images", 7), ("MSAA spatial attention", "inclusion", 3),
        ("MSAA spatial attention", "patches", 3), ("ELA a_h ⊗ a_w", "all test images", 7),
        ("ELA a_h ⊗ a_w", "inclusion", 3), ("ELA a_h ⊗ a_w", "patches", 3)]
    assert rows[1]["Spearman ρ"] == pytest.approx(-1.0) and rows[2]["Pearson r"] == pytest.approx(1.0)
    assert rows[3]["Pearson r"] == pytest.approx(1.0)


def test_sample_helpers_and_figures(model: torch.nn.Module) -> None:
    info = open_dataset(sample_root())
    test_ids = list(info.split_lists["test"])
    picked = pick_by_class(info, test_ids, len(NEU_SEG_CLASSES), per_class=1)
    assert set(picked) == {1, 2, 3}
    ids = [v[0] for v in picked.values() if v]
    x, m = load_batch(info, ids[:2])
    assert x.shape == (2, 3, 200, 200) and x.dtype == torch.float32 and m.shape == (2, 200, 200)
    assert [defect_class(mm) for mm in m] == [k for k, v in picked.items() if v][:2]
    gray = to_gray(x)
    assert gray.dtype == np.uint8 and gray.shape == (2, 200, 200)
    maps = attention_maps(model, x)
    fig = attention_figure(x, m, maps, ids[:2], 1, "inclusion")
    try:
        assert len(fig.axes) == 2 * 5  # 2 rows × 3 image axes + 4 colour bars
        assert len(fig.axes[0].images) == 1 and len(fig.axes[1].images) == 2
        assert fig.axes[1].get_title().startswith("ELA  a_h ⊗ a_w (50 × 50)")
        assert fig._suptitle.get_text().startswith("inclusion:")
    finally:
        plt.close(fig)

    fig = channel_attention_figure({1: maps["msaa_channel"], 2: maps["msaa_channel"][:1]}, NEU_SEG_CLASSES)
    try:
        (ax,) = fig.axes
        d = maps["msaa_channel"].shape[1]
        assert len(ax.patches) == 2 * d
        assert ax.patches[0].get_facecolor()[:3] == pytest.approx(np.array(CLASS_COLORS[1]) / 255)
        assert ax.patches[0].get_height() == pytest.approx(float(maps["msaa_channel"][:, 0].mean()))
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["inclusion", "patches"]
    finally:
        plt.close(fig)

    stats = collect_attention_stats(model, iter_batches(info, ids, batch_size=2))
    assert all(len(stats[k]) == len(ids) for k in STAT_KEYS)
    single = defect_attention_stats(maps, m)
    assert stats["sa_mass"][:2] == pytest.approx(single["sa_mass"])
    fig = mass_vs_area_figure(stats, NEU_SEG_CLASSES)
    try:
        (ax,) = fig.axes
        assert len(ax.collections) == 3 and ax.get_yscale() == "log"
    finally:
        plt.close(fig)
