"""Fashion-MNIST source: cache, Debian files and a loopback mirror with faults.

Small generated IDX files (20 train + 10 test images) stand in for the real
ones; the module's checksum table is swapped for theirs. Nothing here reaches
the internet.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from linflow.core.config import FashionMnistData
from linflow.core.storage import DataError
from linflow.datasets import fashion_mnist as fm

N_TRAIN, N_TEST = 20, 10


def idx_images(images: np.ndarray, magic: int = 0x803) -> bytes:
    """(n, 28, 28) uint8 -> IDX bytes."""
    n, rows, cols = images.shape
    header = b"".join(v.to_bytes(4, "big") for v in (magic, n, rows, cols))
    return header + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray, magic: int = 0x801) -> bytes:
    """(n,) ints -> IDX bytes."""
    return (
        magic.to_bytes(4, "big")
        + len(labels).to_bytes(4, "big")
        + labels.astype(np.uint8).tobytes()
    )


def make_contents(n_train: int = N_TRAIN, n_test: int = N_TEST) -> dict[str, bytes]:
    """Decompressed IDX bytes per key of fm.FILES."""
    rng = np.random.default_rng(0)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        out[f"{split}_images"] = idx_images(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        out[f"{split}_labels"] = idx_labels(np.arange(n) % 10)
    return out


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def spec_for(contents: dict[str, bytes], served: dict[str, bytes] | None = None):
    """A checksum table pinning `contents`; md5 of `served` gz bytes (default: gz of contents)."""
    served = served or {k: gz(v) for k, v in contents.items()}
    return {
        key: fm.IdxFile(
            fm.FILES[key].name,
            len(data),
            hashlib.sha256(data).hexdigest(),
            hashlib.md5(served[key]).hexdigest(),
        )
        for key, data in contents.items()
    }


class Mirror(ThreadingHTTPServer):
    """Serves `files` (path -> bytes); `faults[path]` is a list of modes used one per request."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[str]] = {}
        self.requests: list[str] = []

    def handle_error(self, request, client_address) -> None:
        pass  # a client that timed out leaves a broken pipe; not worth a traceback

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"

    def serve(self, contents: dict[str, bytes], served: dict[str, bytes] | None = None) -> None:
        served = served or {k: gz(v) for k, v in contents.items()}
        for key, data in served.items():
            self.files[f"/{fm.FILES[key].name}.gz"] = data


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        srv: Mirror = self.server  # type: ignore[assignment]
        srv.requests.append(self.path)
        modes = srv.faults.get(self.path, [])
        mode = modes.pop(0) if modes else "ok"
        body = srv.files.get(self.path)
        if mode == "404" or body is None:
            self.send_error(404)
        elif mode == "500":
            self.send_error(500)
        elif mode == "slow":
            time.sleep(1.0)  # longer than the client's timeout; the client has gone by then
        elif mode in ("endless", "liar"):
            self.send_response(200)
            if mode == "liar":  # announces a body far larger than the file can be
                self.send_header("Content-Length", str(1 << 40))
            self.end_headers()
            srv.sent = 0
            chunk = b"\x1f" * (1 << 16)
            try:  # bounded: a client that keeps reading stops the test at 64 MiB
                while srv.sent < (64 << 20):
                    self.wfile.write(chunk)
                    srv.sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if mode == "truncate" else body)
            self.close_connection = True

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def mirror():
    srv = Mirror()
    thread = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


@pytest.fixture
def contents(monkeypatch, tmp_path):
    """Generated IDX contents, pinned in fm.FILES; no Debian dir, no env override."""
    data = make_contents()
    monkeypatch.setattr(fm, "FILES", spec_for(data))
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.delenv("LINFLOW_DATA_ROOT", raising=False)
    return data


def cfg(root: Path, mirror_url: str = "http://127.0.0.1:9/", download: bool = False):
    return FashionMnistData(
        root=str(root),
        mirror=mirror_url,
        download=download,
    )


def raw_dir(root: Path) -> Path:
    return root / "FashionMNIST" / "raw"


def leftovers(root: Path) -> list[str]:
    """Every file under root (downloads must leave none behind on failure)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def fetch(root: Path, srv: Mirror, **kw):
    return fm.find_or_fetch(root, srv.url, True, base_delay=0.01, timeout=5.0, **kw)


def check_arrays(data, contents: dict[str, bytes]) -> None:
    n = N_TRAIN + N_TEST
    assert data.task == "classification"
    assert data.X.shape == (n, 784) and data.X.dtype == np.uint8
    assert data.y.shape == (n,) and data.y.dtype == np.int64
    assert data.is_test.dtype == bool and data.is_test.sum() == N_TEST
    assert not data.is_test[:N_TRAIN].any()
    train = np.frombuffer(contents["train_images"], np.uint8, offset=16).reshape(N_TRAIN, 784)
    test = np.frombuffer(contents["test_images"], np.uint8, offset=16).reshape(N_TEST, 784)
    np.testing.assert_array_equal(data.X, np.concatenate([train, test]))
    np.testing.assert_array_equal(data.y, np.r_[np.arange(N_TRAIN) % 10, np.arange(N_TEST) % 10])
    assert data.x_scale == pytest.approx(1 / 255)
    assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"
    assert len(data.feature_names) == 784 and data.feature_names[29] == "px1_1"


# --- download ---------------------------------------------------------------------


def test_download_then_cache(tmp_path, mirror, contents):
    mirror.serve(contents)
    data = fm.load(cfg(tmp_path, mirror.url, download=True))
    check_arrays(data, contents)
    names = sorted(f"{spec.name}.gz" for spec in fm.FILES.values())
    assert leftovers(tmp_path) == [f"FashionMNIST/raw/{n}" for n in names]  # torchvision layout
    assert len(mirror.requests) == 4
    check_arrays(fm.load(cfg(tmp_path, mirror.url, download=True)), contents)
    assert len(mirror.requests) == 4  # second load: all from the cache


def test_checksum_mismatch(tmp_path, mirror, contents):
    mirror.serve(contents)
    mirror.files["/train-labels-idx1-ubyte.gz"] = gz(b"not the published file")
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: MD5 .* does not match"):
        fetch(tmp_path, mirror)
    assert mirror.requests.count("/train-labels-idx1-ubyte.gz") == 1  # not retried
    assert "FashionMNIST/raw/train-labels-idx1-ubyte.gz" not in leftovers(tmp_path)
    assert not list(raw_dir(tmp_path).glob(".*.tmp"))


def test_content_mismatch_with_matching_md5(tmp_path, mirror, contents, monkeypatch):
    """The gz matches its MD5 but decompresses to other bytes: the SHA-256 pin catches it."""
    served = {k: gz(v) for k, v in contents.items()}
    served["test_images"] = gz(contents["test_images"][:-1] + b"\x00")
    monkeypatch.setattr(fm, "FILES", spec_for(contents, served))
    mirror.serve(contents, served)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: contents .* do not match"):
        fetch(tmp_path, mirror)
    assert "FashionMNIST/raw/t10k-images-idx3-ubyte.gz" not in leftovers(tmp_path)


def test_truncated_body_is_retried_then_fails(tmp_path, mirror, contents):
    mirror.serve(contents)
    mirror.faults["/train-images-idx3-ubyte.gz"] = ["truncate"] * 4
    with pytest.raises(DataError, match=r"failed after 4 attempts \(truncated body"):
        fetch(tmp_path, mirror)
    assert mirror.requests.count("/train-images-idx3-ubyte.gz") == 4
    assert leftovers(tmp_path) == []


def test_404_is_not_retried(tmp_path, mirror, contents):
    mirror.serve(contents)
    mirror.faults["/train-images-idx3-ubyte.gz"] = ["404"] * 4
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: HTTP 404"):
        fetch(tmp_path, mirror)
    assert mirror.requests == ["/train-images-idx3-ubyte.gz"]
    assert leftovers(tmp_path) == []


def test_500_then_success(tmp_path, mirror, contents):
    mirror.serve(contents)
    mirror.faults["/t10k-labels-idx1-ubyte.gz"] = ["500", "truncate"]
    arrays = fetch(tmp_path, mirror)
    assert mirror.requests.count("/t10k-labels-idx1-ubyte.gz") == 3
    np.testing.assert_array_equal(arrays["test_labels"], np.arange(N_TEST) % 10)
    assert (raw_dir(tmp_path) / "t10k-labels-idx1-ubyte.gz").is_file()
    assert not list(raw_dir(tmp_path).glob(".*.tmp"))


def test_timeout_is_retried(tmp_path, mirror, contents):
    mirror.serve(contents)
    mirror.faults["/train-labels-idx1-ubyte.gz"] = ["slow"]
    arrays = fm.find_or_fetch(tmp_path, mirror.url, True, base_delay=0.01, timeout=0.3)
    assert mirror.requests.count("/train-labels-idx1-ubyte.gz") == 2
    assert len(arrays["train_labels"]) == N_TRAIN


def test_progress_bar_only_on_a_tty(tmp_path, mirror, contents, monkeypatch, capsys):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    mirror.serve(contents)
    fetch(tmp_path / "a", mirror)
    assert capsys.readouterr().err == ""  # pytest's stderr is not a TTY
    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    fetch(tmp_path / "b", mirror)
    assert "\rtrain-images-idx3-ubyte.gz: 0.0/0.0 MB 100%" in tty.getvalue()


def test_500_every_time(tmp_path, mirror, contents):
    mirror.serve(contents)
    mirror.faults["/train-images-idx3-ubyte.gz"] = ["500"] * 4
    with pytest.raises(DataError, match=r"failed after 4 attempts \(HTTP 500\)"):
        fetch(tmp_path, mirror)
    assert len(mirror.requests) == 4
    assert leftovers(tmp_path) == []


def test_connection_refused(tmp_path, contents):
    with pytest.raises(DataError, match=r"download failed after 2 attempts"):
        fm.find_or_fetch(tmp_path, "http://127.0.0.1:9/", True, attempts=2, base_delay=0.01)
    assert leftovers(tmp_path) == []


def test_corrupted_gzip(tmp_path, mirror, contents, monkeypatch):
    served = {k: gz(v) for k, v in contents.items()}
    good = served["train_images"]
    served["train_images"] = good[:20] + bytes(b ^ 0xFF for b in good[20:40]) + good[40:]
    monkeypatch.setattr(fm, "FILES", spec_for(contents, served))  # MD5 passes, gunzip fails
    mirror.serve(contents, served)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: not a valid gzip file"):
        fetch(tmp_path, mirror)
    assert leftovers(tmp_path) == []


def test_wrong_magic(tmp_path, mirror, contents, monkeypatch):
    contents = dict(contents, train_labels=idx_labels(np.arange(N_TRAIN) % 10, magic=0x803))
    monkeypatch.setattr(fm, "FILES", spec_for(contents))
    mirror.serve(contents)
    with pytest.raises(DataError, match=r"magic number 0x00000803, expected 0x00000801"):
        fetch(tmp_path, mirror)
    assert "FashionMNIST/raw/train-labels-idx1-ubyte.gz" not in leftovers(tmp_path)


# --- parsing --------------------------------------------------------------------------


def test_count_mismatch(tmp_path, contents, monkeypatch):
    contents = dict(contents, train_labels=idx_labels(np.arange(N_TRAIN - 1) % 10))
    monkeypatch.setattr(fm, "FILES", spec_for(contents))
    put_cache(tmp_path, contents)
    with pytest.raises(DataError, match=r"train set: 20 images but 19 labels"):
        fm.load(cfg(tmp_path))


def test_label_out_of_range(tmp_path, mirror, contents, monkeypatch):
    contents = dict(contents, test_labels=idx_labels(np.r_[np.zeros(N_TEST - 1), 10]))
    monkeypatch.setattr(fm, "FILES", spec_for(contents))
    mirror.serve(contents)
    with pytest.raises(
        DataError, match=r"t10k-labels-idx1-ubyte\.gz: label 10 out of range 0\.\.9"
    ):
        fetch(tmp_path, mirror)
    assert "FashionMNIST/raw/t10k-labels-idx1-ubyte.gz" not in leftovers(tmp_path)


@pytest.mark.parametrize(
    ("data", "kind", "message"),
    [
        (b"\x00\x00\x08", "labels", "3 bytes is too short for an IDX labels header"),
        (idx_images(np.zeros((2, 28, 27), np.uint8)), "images", "images are 28x27, expected 28x28"),
        (
            idx_images(np.zeros((2, 28, 28), np.uint8))[:-1],
            "images",
            r"1583 bytes, but its header \[2, 28, 28\] implies 1584",
        ),
        (idx_labels(np.arange(3)) + b"\x00", "labels", "12 bytes, but its header"),
    ],
    ids=["short", "not-28x28", "images-length", "labels-length"],
)
def test_parse_idx_errors(data, kind, message):
    with pytest.raises(DataError, match=rf"^some/file: {message}"):
        fm.parse_idx(data, kind, "some/file")


# --- local sources -------------------------------------------------------------------


def put_cache(root: Path, contents: dict[str, bytes], compress: bool = False) -> None:
    raw_dir(root).mkdir(parents=True, exist_ok=True)
    for key, data in contents.items():
        name = fm.FILES[key].name
        if compress:
            (raw_dir(root) / f"{name}.gz").write_bytes(gz(data))
        else:
            (raw_dir(root) / name).write_bytes(data)


def test_cache_hit_plain_files(tmp_path, contents, monkeypatch):
    put_cache(tmp_path / "elsewhere", contents)
    monkeypatch.setenv("LINFLOW_DATA_ROOT", str(tmp_path / "elsewhere"))  # overrides cfg.root
    check_arrays(fm.load(cfg(tmp_path / "unused")), contents)


def test_debian_dir_used_when_no_cache(tmp_path, contents, monkeypatch):
    debian = tmp_path / "debian"
    debian.mkdir()
    for key, data in contents.items():
        (debian / f"{fm.FILES[key].name}.gz").write_bytes(gz(data))
    monkeypatch.setattr(fm, "DEBIAN_DIR", debian)
    check_arrays(fm.load(cfg(tmp_path / "cache")), contents)
    assert not (tmp_path / "cache").exists()  # nothing copied or downloaded


def test_bad_cache_file_falls_through_with_warning(tmp_path, mirror, contents, caplog):
    put_cache(tmp_path, contents, compress=True)
    bad = raw_dir(tmp_path) / "train-images-idx3-ubyte.gz"
    bad.write_bytes(gz(contents["train_images"])[:-10])  # truncated gzip
    (raw_dir(tmp_path) / "t10k-labels-idx1-ubyte").write_bytes(b"stale")  # wrong content
    mirror.serve(contents)
    check_arrays(fm.load(cfg(tmp_path, mirror.url, download=True)), contents)
    assert mirror.requests == ["/train-images-idx3-ubyte.gz"]  # the rest came from the cache
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("train-images-idx3-ubyte.gz: not a valid gzip file" in w for w in warnings)
    assert any("t10k-labels-idx1-ubyte: contents (5 bytes" in w for w in warnings)
    fm.load(cfg(tmp_path, mirror.url, download=True))  # the re-downloaded file replaced it
    assert len(mirror.requests) == 1


def test_nothing_found_without_download(tmp_path, contents):
    with pytest.raises(DataError) as info:
        fm.load(cfg(tmp_path))
    msg = str(info.value)
    assert "\n" not in msg
    assert "no verified copy of train-images-idx3-ubyte" in msg
    assert str(raw_dir(tmp_path)) in msg and str(fm.DEBIAN_DIR) in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "download: true" in msg
    assert "remove fashion_mnist from datasets: in params.yaml" in msg and "dvc.yaml" in msg
    assert leftovers(tmp_path) == []


# --- the real data -----------------------------------------------------------------


@pytest.mark.skipif(not fm.DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_real_data_from_debian_package(tmp_path, monkeypatch):
    monkeypatch.delenv("LINFLOW_DATA_ROOT", raising=False)
    start = time.perf_counter()
    data = fm.load(cfg(tmp_path))  # empty cache, no download: the Debian files
    seconds = time.perf_counter() - start
    assert data.X.shape == (70000, 784) and data.X.dtype == np.uint8
    assert data.is_test.sum() == 10000 and data.is_test[60000:].all()
    np.testing.assert_array_equal(np.bincount(data.y), np.full(10, 7000))
    np.testing.assert_array_equal(np.bincount(data.y[data.is_test]), np.full(10, 1000))
    assert seconds < 10, f"loading took {seconds:.1f} s"


# --- bounded inputs ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["endless", "liar"])
def test_a_mirror_that_never_stops_sending_is_cut_at_the_file_size(
    tmp_path, mirror, contents, mode
):
    mirror.serve(contents)
    name = f"/{fm.FILES['train_labels'].name}.gz"
    mirror.faults[name] = [mode] * 4
    t0 = time.monotonic()
    with pytest.raises(DataError, match=r"more than the \d+ bytes this file can have") as info:
        fetch(tmp_path, mirror)
    assert time.monotonic() - t0 < 20 and "\n" not in str(info.value)
    cap = fm.gz_cap(fm.FILES["train_labels"])
    assert getattr(mirror, "sent", 0) < cap + (8 << 20)  # stopped reading near the cap
    assert mirror.requests.count(name) == 1  # refused, not retried
    # nothing of it written (the images file before it was verified and is kept)
    assert not [f for f in leftovers(tmp_path) if "labels" in f or f.endswith(".tmp")]


def test_a_gzip_bomb_in_the_cache_is_refused_with_bounded_memory(tmp_path, contents):
    """1 GiB of zeros in ~1 MB of gzip where the labels file should be."""
    import subprocess
    import sys
    import zlib

    bomb = raw_dir(tmp_path) / f"{fm.FILES['train_labels'].name}.gz"
    bomb.parent.mkdir(parents=True)
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    with open(bomb, "wb") as fh:
        for _ in range(1024):
            fh.write(deflate.compress(zeros))
        fh.write(deflate.flush())
    assert bomb.stat().st_size < 2 << 20
    spec = fm.FILES["train_labels"]
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from linflow.datasets import fashion_mnist as fm\n"
        "from linflow.core.errors import DataError\n"
        f"spec = fm.IdxFile({spec.name!r}, {spec.size}, {spec.sha256!r}, {spec.md5_gz!r})\n"
        "try:\n"
        f"    fm.read_verified(Path({str(bomb)!r}), 'train_labels', spec, gz=True)\n"
        "except DataError as exc:\n"
        "    print(exc)\n"
        # VmHWM: this process's own peak (ru_maxrss would include the forking parent's)
        "hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0]\n"
        "print(int(hwm.split()[1]) // 1024)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    message, peak_mb = res.stdout.strip().splitlines()
    assert (
        f"decompresses to more than the {spec.size} bytes of {spec.name} (a gzip bomb?)" in message
    )
    assert int(peak_mb) < 200, peak_mb  # it was 2.1 GB: the whole bomb inflated in memory
