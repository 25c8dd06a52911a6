"""Download NEU-Seg at a pinned commit and verify every file against the packaged SHA256 list."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from smelib.data.dataset import DatasetError

__all__ = ["DEFAULT_URL", "NEU_SEG_COMMIT", "download_neu_seg", "read_sha256_list"]

NEU_SEG_COMMIT = "da8cebedb292beca4d101db8c442d5706fac3bfe"
DEFAULT_URL = f"https://github.com/DHW-Master/NEU_Seg/archive/{NEU_SEG_COMMIT}.zip"


def read_sha256_list(path: str | os.PathLike[str]) -> dict[str, str]:
    """Parse a ``sha256sum`` output file: ``{relative_path: hex_digest}``."""
    out: dict[str, str] = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise DatasetError(f"{path}:{n}: not a sha256sum line: {line!r}")
        out[name.lstrip("*")] = digest.lower()
    return out


def _packaged_sha_list() -> Path:
    return Path(__file__).with_name("neu_seg_sha256.txt")


def download_neu_seg(
    dest: str | os.PathLike[str],
    *,
    url: str = DEFAULT_URL,
    sha_list: str | os.PathLike[str] | None = None,
    timeout: float = 60.0,
    progress: bool = False,
) -> Path:
    """Download the NEU-Seg archive, verify every file, and unpack ``images/`` and ``annotations/`` into ``dest``.

    The archive is a zip whose files sit under one top folder (GitHub's ``NEU_Seg-<commit>/``). Every entry of
    the SHA-256 list under ``images/`` or ``annotations/`` must be in the archive with that digest, and the
    archive must hold no other file there; other entries of the list (``SOURCE.md``, which the upstream
    repository does not have) are skipped. Nothing is written to ``dest`` unless all files verify. The list is
    copied to ``dest/SHA256SUMS``.

    Args:
        dest: target folder; must not exist or be empty.
        url: archive URL (``http(s)://`` or ``file://``); default: the pinned GitHub commit.
        sha_list: a ``sha256sum``-format list; default: the one shipped in the package (``neu_seg_sha256.txt``,
            made from the full dataset).
        timeout: seconds for the connection.
        progress: print a tqdm bar while downloading.

    Returns:
        ``dest``.

    Raises:
        DatasetError: ``dest`` is not empty, the download fails, the file is not a zip, or a file is missing,
            unexpected or has the wrong digest.
    """
    dest = Path(dest).expanduser()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DatasetError(f"{dest}: exists and is not an empty folder; refusing to download into it")
    sums_path = Path(sha_list) if sha_list is not None else _packaged_sha_list()
    expected = {k: v for k, v in read_sha256_list(sums_path).items() if k.startswith(("images/", "annotations/"))}
    if not expected:
        raise DatasetError(f"{sums_path}: lists no images/ or annotations/ files")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - URL chosen by the user
            total = int(resp.headers.get("Content-Length") or 0) or None
            buf = io.BytesIO()
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, desc="download")
            while chunk := resp.read(1 << 20):
                buf.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
    except OSError as err:
        raise DatasetError(f"{url}: download failed ({err})") from None
    try:
        archive = zipfile.ZipFile(buf)
    except zipfile.BadZipFile:
        raise DatasetError(f"{url}: the download is not a zip archive") from None
    files: dict[str, bytes] = {}
    problems: list[str] = []
    with archive:
        for entry in archive.infolist():
            if entry.is_dir():
                continue
            parts = entry.filename.split("/", 1)
            rel = parts[1] if len(parts) == 2 else parts[0]
            if not rel.startswith(("images/", "annotations/")):
                continue
            if ".." in Path(rel).parts or rel.startswith("/"):
                problems.append(f"{entry.filename}: unsafe path in the archive")
                continue
            data = archive.read(entry)
            want = expected.get(rel)
            if want is None:
                problems.append(f"{rel}: in the archive but not in {sums_path.name}")
            elif hashlib.sha256(data).hexdigest() != want:
                problems.append(f"{rel}: SHA-256 mismatch (the archive's file differs from the listed digest)")
            files[rel] = data
    missing = sorted(set(expected) - set(files))
    problems += [f"{rel}: listed in {sums_path.name} but missing from the archive" for rel in missing[:20]]
    if len(missing) > 20:
        problems.append(f"... and {len(missing) - 20} more missing files")
    if problems:
        raise DatasetError(
            f"{url}: verification failed, nothing written ({len(problems)} problem(s)):\n  "
            + "\n  ".join(problems[:20])
        )
    dest.mkdir(parents=True, exist_ok=True)
    # Unpack into a sibling temp folder and rename, so an interrupted unpack never looks like a dataset.
    tmp = Path(tempfile.mkdtemp(prefix=".neu_seg_", dir=dest))
    for rel, data in files.items():
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    for top in ("images", "annotations"):
        (tmp / top).rename(dest / top)
    tmp.rmdir()
    shutil.copyfile(sums_path, dest / "SHA256SUMS")
    return dest
