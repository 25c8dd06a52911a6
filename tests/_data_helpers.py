"""Shared helpers for the data, splits and augmentation tests: paths, tiny datasets written to tmp, a local
HTTP server."""

from __future__ import annotations

import functools
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "NEU_Seg_sample"
FULL = REPO.parent / "shared" / "data" / "NEU_Seg"
FULL_REASON = f"the full NEU-Seg dataset is not at {FULL} (CI has it at ../shared beside the clone)"
AUDIT_DIR = REPO / "results" / "audit"

# What the sample was chosen to contain (see data/README.md).
SAMPLE_EXACT_DUP_GROUP = [
    "test/000301", "test/000305", "training/001281", "training/001285",
    "training/002151", "training/002155", "training/003021", "training/003025",
]
SAMPLE_LEAKED_TEST = ["test/000050", "test/000250", "test/000301", "test/000305", "test/000450", "test/000650",
                      "test/000765"]
EXACT_DUPLICATE_PAIRS = [
    ("training/001281", "training/001285"), ("training/002151", "training/002155"),
    ("training/003021", "training/003025"), ("test/000301", "test/000305"),
]


def texture(seed: int, h: int = 64, w: int = 64) -> np.ndarray:
    """A random smooth-ish uint8 gray texture ``(h, w)`` with structure at several scales."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w))
    for cell in (16, 8, 4):
        small = rng.normal(size=(h // cell + 1, w // cell + 1))
        img += np.kron(small, np.ones((cell, cell)))[:h, :w] * cell
    img = (img - img.min()) / (np.ptp(img) + 1e-9) * 200 + 20
    return img.astype(np.uint8)


def write_voc(
    root: Path,
    images: dict[str, np.ndarray],
    masks: dict[str, np.ndarray],
    *,
    class_names: Sequence[str] | None = None,
    lists: dict[str, Sequence[str]] | None = None,
    image_ext: str = ".png",
    palette_masks: bool = False,
) -> Path:
    """Write a VOC-layout dataset under ``root/VOCdevkit/VOC2007``; return ``root``."""
    voc = root / "VOCdevkit" / "VOC2007"
    (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (voc / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    for stem, arr in images.items():
        Image.fromarray(arr).save(voc / "JPEGImages" / f"{stem}{image_ext}")
    for stem, arr in masks.items():
        im = Image.fromarray(arr.astype(np.uint8), mode="L")
        if palette_masks:
            im = im.convert("P")
            im.putpalette([v for k in range(256) for v in (k * 40 % 256, k * 90 % 256, k * 17 % 256)])
        im.save(voc / "SegmentationClass" / f"{stem}.png")
    if class_names is not None:
        (voc / "class_names.txt").write_text("\n".join(class_names) + "\n")
    if lists:
        (voc / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        for name, ids in lists.items():
            (voc / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def write_native(root: Path, items: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Write a native-layout dataset; ``items`` maps ``"<split>/<stem>"`` to ``(image, mask)``."""
    for sid, (img, mask) in items.items():
        split, stem = sid.split("/")
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "images" / split / f"{stem}.jpg", quality=95)
        Image.fromarray(mask.astype(np.uint8), mode="L").save(root / "annotations" / split / f"{stem}.png")
    return root


def zip_of(folder: Path, top: str, tamper: str | None = None, drop: str | None = None) -> bytes:
    """A zip of ``folder``'s images/ and annotations/ under ``top/`` (as GitHub archives are), optionally with one
    file's bytes changed or one file left out."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(f"{top}/README.md", "# NEU-Seg\n")
        for p in sorted(folder.rglob("*")):
            rel = p.relative_to(folder).as_posix()
            if not p.is_file() or not rel.startswith(("images/", "annotations/")) or rel == drop:
                continue
            data = p.read_bytes()
            if rel == tamper:
                data = data[:-1] + bytes([data[-1] ^ 1])
            z.writestr(f"{top}/{rel}", data)
    return buf.getvalue()


@contextmanager
def http_server(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 at a free port in a thread; yield the base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
