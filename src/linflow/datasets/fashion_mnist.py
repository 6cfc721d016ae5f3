"""Fashion-MNIST: find, verify and parse the four IDX files (no torchvision).

Each file is taken from the first source that holds a verified copy: a local
cache in torchvision's layout (``<root>/FashionMNIST/raw/<name>[.gz]``), the
files of the Debian package ``dataset-fashion-mnist``, then the HTTP mirror
(only when ``download`` is on; the ``.gz`` is kept in the cache so torchvision
reuses it). Integrity is pinned on the decompressed IDX bytes by SHA-256, since
repackaged ``.gz`` files differ bytewise; downloads are also checked against
the published ``.gz`` MD5 and land at their final path only once verified.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np

from linflow.core.errors import DataError
from linflow.core.storage import atomic_path
from linflow.datasets import RawData

log = logging.getLogger(__name__)
T = TypeVar("T")

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
CLASS_NAMES += ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SIDE = 28  # images are SIDE x SIDE pixels
MAGIC = {"images": 0x00000803, "labels": 0x00000801}  # IDX: ubyte data, 3 or 1 dimensions


@dataclass(frozen=True)
class IdxFile:
    name: str  # published file name without ".gz"
    size: int  # bytes, decompressed
    sha256: str  # of the decompressed bytes: what is pinned
    md5_gz: str  # of the published .gz: what the mirror serves


# Keys are "<split>_<kind>"; tests substitute their own table.
FILES: dict[str, IdxFile] = {
    "train_images": IdxFile(
        "train-images-idx3-ubyte",
        47040016,
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    ),
    "train_labels": IdxFile(
        "train-labels-idx1-ubyte",
        60008,
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "25c81989df183df01b3e8a0aad5dffbe",
    ),
    "test_images": IdxFile(
        "t10k-images-idx3-ubyte",
        7840016,
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "bef4ecab320f06d8554ea6380940ec79",
    ),
    "test_labels": IdxFile(
        "t10k-labels-idx1-ubyte",
        10008,
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        "bb300cfdad3c16e7a12a480ee83cd310",
    ),
}


def load(cfg, rng=None) -> RawData:
    """All 70000 images: X uint8 (70000, 784), train rows first; y int64 (70000,)."""
    arrays = find_or_fetch(data_root(cfg.root), cfg.mirror, cfg.download)
    return to_raw_data(arrays)


def data_root(root: str) -> Path:
    """LINFLOW_DATA_ROOT if set, else `root` (relative to the working directory)."""
    return Path(os.environ.get("LINFLOW_DATA_ROOT") or root)


def to_raw_data(arrays: Mapping[str, np.ndarray]) -> RawData:
    """Stack train then test: images (n, 784) uint8 and labels (n,) int64 -> RawData."""
    for split in ("train", "test"):
        n_img, n_lab = len(arrays[f"{split}_images"]), len(arrays[f"{split}_labels"])
        if n_img != n_lab:
            raise DataError(
                f"fashion_mnist {split} set: {n_img} images but {n_lab} labels "
                f"({FILES[f'{split}_images'].name} vs {FILES[f'{split}_labels'].name})"
            )
    n_train, n_test = len(arrays["train_labels"]), len(arrays["test_labels"])
    return RawData(
        task="classification",
        X=np.concatenate([arrays["train_images"], arrays["test_images"]]),  # (n, 784) uint8
        y=np.concatenate([arrays["train_labels"], arrays["test_labels"]]),  # (n,) int64
        feature_names=[f"px{r}_{c}" for r in range(SIDE) for c in range(SIDE)],
        class_names=list(CLASS_NAMES),
        x_scale=1.0 / 255.0,
        is_test=np.arange(n_train + n_test) >= n_train,  # (n,) the official test rows
    )


def find_or_fetch(
    root: Path,
    mirror: str,
    download: bool,
    *,
    files: Mapping[str, IdxFile] | None = None,
    debian_dir: Path | None = None,
    attempts: int = 4,
    base_delay: float = 1.0,
    timeout: float = 30.0,
) -> dict[str, np.ndarray]:
    """Each file of `files` (default FILES) from the first source with a verified copy.

    Looks in `root`/FashionMNIST/raw (plain, then .gz), then `debian_dir` (default
    DEBIAN_DIR), then downloads `mirror`/<name>.gz into the cache if `download`.
    Returns {key: array}: images (n, 784) uint8, labels (n,) int64.
    """
    files = FILES if files is None else files
    debian_dir = DEBIAN_DIR if debian_dir is None else debian_dir
    cache = Path(root) / "FashionMNIST" / "raw"
    arrays = {}
    for key, spec in files.items():
        candidates = [cache / spec.name, cache / f"{spec.name}.gz", debian_dir / f"{spec.name}.gz"]
        rejected = []
        for path in candidates:
            if not path.is_file():
                continue
            try:
                arrays[key] = read_verified(path, key, spec, gz=path.suffix == ".gz")
                log.info("fashion_mnist: using %s", path)
                break
            except DataError as exc:
                log.warning("fashion_mnist: skipping %s", exc)
                rejected.append(str(exc))
        else:
            if not download:
                raise DataError(_not_found(spec, cache, debian_dir, rejected))
            url = f"{mirror.rstrip('/')}/{spec.name}.gz"
            dest = cache / f"{spec.name}.gz"
            log.info("fashion_mnist: downloading %s -> %s", url, dest)
            arrays[key] = fetch_file(
                url,
                dest,
                spec.md5_gz,
                check=partial(read_verified, key=key, spec=spec, gz=True, label=url),
                attempts=attempts,
                base_delay=base_delay,
                timeout=timeout,
                max_bytes=gz_cap(spec),
            )
    return arrays


def gz_cap(spec: IdxFile) -> int:
    """The most bytes a .gz of `spec` can take: deflate's worst case (stored blocks,
    5 bytes per 16 KiB) plus gzip's header and trailer, with slack for a file name."""
    return spec.size + 5 * (spec.size // 16384 + 1) + 1024


def _not_found(spec: IdxFile, cache: Path, debian_dir: Path, rejected: list[str]) -> str:
    bad = f" (rejected: {'; '.join(rejected)})" if rejected else ""
    return (
        f"fashion_mnist: no verified copy of {spec.name} in {cache} or {debian_dir}{bad} "
        "and download is false; get the data with `apt-get install dataset-fashion-mnist`, "
        f"or put torchvision's FashionMNIST/raw files under {cache.parent.parent}, or set "
        "download: true; to switch the dataset off, remove fashion_mnist from datasets: "
        "in params.yaml and its entries in dvc.yaml"
    )


def read_verified(
    path: Path, key: str, spec: IdxFile, *, gz: bool, label: str | None = None
) -> np.ndarray:
    """Read `path` (gzip'd if `gz`), check size and SHA-256 against `spec`, parse it."""
    label = label or str(path)
    data = _read_capped(path, spec, gz, label)
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != spec.size or digest != spec.sha256:
        raise DataError(
            f"{label}: contents ({len(data)} bytes, sha256 {digest[:12]}) do not match "
            f"{spec.name} ({spec.size} bytes, sha256 {spec.sha256[:12]})"
        )
    return parse_idx(data, key.rsplit("_", 1)[1], label)


def _read_capped(path: Path, spec: IdxFile, gz: bool, label: str) -> bytes:
    """The (decompressed) bytes of `path`, never more than spec.size of them.

    A gzip bomb (1 GiB of zeros in a 1 MB .gz) or an oversized file is refused as
    soon as it passes the size the IDX file must have, with at most one chunk
    beyond it in memory.
    """
    if not gz:
        size = path.stat().st_size
        if size != spec.size:
            raise DataError(
                f"{label}: contents ({size} bytes) do not match {spec.name} ({spec.size} bytes)"
            )
        return path.read_bytes()
    inflate = zlib.decompressobj(wbits=31)  # gzip framing
    out = bytearray()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 16):
                # max_length bounds each step, so a bomb never inflates past the cap
                out += inflate.decompress(chunk, spec.size + 1 - len(out))
                while inflate.unconsumed_tail and len(out) <= spec.size:
                    out += inflate.decompress(inflate.unconsumed_tail, spec.size + 1 - len(out))
                if len(out) > spec.size:
                    raise DataError(
                        f"{label}: decompresses to more than the {spec.size} bytes of "
                        f"{spec.name} (a gzip bomb?); refused"
                    )
                if inflate.eof:
                    break
        if not inflate.eof:
            raise DataError(f"{label}: not a valid gzip file (compressed data ends early)")
    except zlib.error as exc:
        raise DataError(f"{label}: not a valid gzip file ({exc})") from None
    return bytes(out)


def parse_idx(data: bytes, kind: str, label: str) -> np.ndarray:
    """IDX bytes -> images (n, 784) uint8 if kind == "images", labels (n,) int64 if "labels"."""
    ndim = 3 if kind == "images" else 1
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{label}: {len(data)} bytes is too short for an IDX {kind} header")
    magic = int.from_bytes(data[:4], "big")
    if magic != MAGIC[kind]:
        raise DataError(
            f"{label}: magic number {magic:#010x}, expected {MAGIC[kind]:#010x} (IDX {kind})"
        )
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if dims[1:] not in ([], [SIDE, SIDE]):
        raise DataError(f"{label}: images are {dims[1]}x{dims[2]}, expected {SIDE}x{SIDE}")
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise DataError(f"{label}: {len(data)} bytes, but its header {dims} implies {expected}")
    values = np.frombuffer(data, dtype=np.uint8, offset=header)
    if kind == "images":
        return values.reshape(dims[0], SIDE * SIDE)  # (n, 784), a view on `data`
    if values.size and values.max() >= len(CLASS_NAMES):
        raise DataError(f"{label}: label {values.max()} out of range 0..{len(CLASS_NAMES) - 1}")
    return values.astype(np.int64)  # (n,)


class _Retryable(Exception):
    """A fault worth another attempt: timeout, dropped connection, HTTP 5xx."""


def fetch_file(
    url: str,
    dest: Path,
    md5: str,
    *,
    check: Callable[[Path], T] | None = None,
    attempts: int = 4,
    base_delay: float = 1.0,
    timeout: float = 30.0,
    max_bytes: int | None = None,
) -> T | None:
    """Download `url` to `dest` atomically; return `check(tmp)`'s result.

    With `max_bytes`, a body longer than that (announced or streamed) is refused
    at once: a mirror that never stops sending cannot fill the disk.

    The bytes stream into a temp file next to `dest`; it must match `md5`
    (and pass `check`, which raises DataError) before the rename, so `dest`
    never holds a partial or unverified file. Timeouts, dropped connections
    and HTTP 5xx are retried with exponential backoff; HTTP 4xx and a
    checksum mismatch fail at once.
    """
    with atomic_path(dest) as tmp:
        for attempt in range(1, attempts + 1):
            try:
                got = _download_once(url, tmp, timeout, max_bytes)
                break
            except _Retryable as exc:
                if attempt == attempts:
                    raise DataError(
                        f"{url}: download failed after {attempts} attempts ({exc})"
                    ) from None
                delay = base_delay * 2 ** (attempt - 1)
                log.warning("%s: %s; retrying in %.2g s", url, exc, delay)
                time.sleep(delay)
        if got != md5:
            raise DataError(f"{url}: MD5 {got} does not match the published {md5}")
        result = check(tmp) if check is not None else None
    return result


def _download_once(url: str, tmp: Path, timeout: float, max_bytes: int | None = None) -> str:
    """Stream `url` into `tmp` (overwritten); return the MD5 of the bytes."""
    h = hashlib.md5()
    limit = f"more than the {max_bytes} bytes this file can have"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
            total = resp.length  # from Content-Length; None if the server sent none
            if max_bytes is not None and total is not None and total > max_bytes:
                raise DataError(f"{url}: the server announces {total} bytes, {limit}")
            done = 0
            progress = sys.stderr.isatty()
            while chunk := resp.read(1 << 20):
                if max_bytes is not None and done + len(chunk) > max_bytes:
                    raise DataError(f"{url}: the server sent {limit}; download refused")
                out.write(chunk)
                h.update(chunk)
                done += len(chunk)
                if progress:
                    _progress(url, done, total)
            if progress:
                sys.stderr.write("\n")
            if total is not None and done < total:  # read() returns b"" on a cut body
                raise _Retryable(f"truncated body: got {done} of {total} bytes")
    except urllib.error.HTTPError as exc:
        if exc.code >= 500:
            raise _Retryable(f"HTTP {exc.code}") from None
        raise DataError(f"{url}: HTTP {exc.code} {exc.reason} (check the mirror URL)") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise _Retryable(str(getattr(exc, "reason", exc)) or type(exc).__name__) from None
    return h.hexdigest()


def _progress(url: str, done: int, total: int | None) -> None:
    of = f"/{total / 1e6:.1f} MB {100 * done / total:3.0f}%" if total else " MB"
    sys.stderr.write(f"\r{url.rsplit('/', 1)[-1]}: {done / 1e6:.1f}{of}")
    sys.stderr.flush()
