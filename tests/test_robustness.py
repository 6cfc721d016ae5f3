"""Bad params, bad data and a hostile filesystem, through the real `linflow` CLI.

Every case states the behaviour a user relies on: exit code 1, one line on
stderr naming the key or file, and nothing written at any output path.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from linflow.core.storage import load_npz, save_npz

ROOT = Path(__file__).resolve().parents[1]


def linflow(*args: str, params: Path | None = None, **kw) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "linflow"]
    if params is not None:
        cmd += ["--params", str(params)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=ROOT, **kw)


def one_error_line(res: subprocess.CompletedProcess, stage: str) -> str:
    """The single stderr line of a failed stage (a traceback or a second line fails)."""
    assert res.returncode == 1, (res.returncode, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(f"linflow {stage}: error: ")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    return errors[0]


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params))
    return path


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.fixture(scope="module")
def line_data(tmp_path_factory, base_params):
    """data/raw + data/prepared for `line`, made by the real stages."""
    d = tmp_path_factory.mktemp("line")
    params = write_params(d / "params.yaml", base_params)
    assert linflow("prepare", "line", "--out", str(d / "raw.npz"), params=params).returncode == 0
    res = linflow(
        "split", "line", "--raw", str(d / "raw.npz"), "--out", str(d / "prep"), params=params
    )
    assert res.returncode == 0, res.stderr
    return d


# --- params ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "params.yaml: file not found"),
        ("", "params.yaml: file is empty"),
        ("seed: [1, 2\n", "params.yaml: not valid YAML at line"),
        ("- 1\n", "params.yaml must hold a mapping"),
    ],
    ids=["missing", "empty", "malformed", "not-a-mapping"],
)
def test_unusable_params_file_is_named_and_nothing_written(tmp_path, content, message):
    params = tmp_path / "params.yaml"
    if content is not None:
        params.write_text(content)
    res = linflow("prepare", "line", "--out", str(tmp_path / "out" / "line.npz"), params=params)
    assert message in one_error_line(res, "prepare")
    assert not (tmp_path / "out").exists()


def _train(data: Path, out: Path, params: Path, **kw) -> subprocess.CompletedProcess:
    return linflow(
        "train",
        "line",
        "--data",
        str(data),
        "--model",
        str(out / "model"),
        "--reports",
        str(out / "reports"),
        params=params,
        **kw,
    )


def test_batch_size_larger_than_the_train_split(tmp_path, line_data, base_params):
    p = copy.deepcopy(base_params)
    p["train"]["regression"]["batch_size"] = 71  # the train split of line has 70 rows
    res = _train(line_data / "prep", tmp_path / "out", write_params(tmp_path / "p.yaml", p))
    line = one_error_line(res, "train")
    assert "train.regression.batch_size must be <= the train split size (70 rows of line)" in line
    assert line.endswith("got 71")
    assert not (tmp_path / "out").exists()


def test_cuda_without_a_gpu_names_the_key_and_writes_nothing(tmp_path, line_data, base_params):
    p = copy.deepcopy(base_params)
    p["train"]["device"] = "cuda"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, also on a machine that has one
    res = _train(
        line_data / "prep", tmp_path / "out", write_params(tmp_path / "p.yaml", p), env=env
    )
    assert "params.yaml: train.device must be 'cpu' on this machine" in one_error_line(res, "train")
    assert not (tmp_path / "out").exists()


def test_fractions_leaving_an_empty_split(tmp_path, line_data, base_params):
    p = copy.deepcopy(base_params)
    p["split"] = {"train": 0.996, "val": 0.002, "test": 0.002}  # 100 rows: 0 val, 0 test
    out = tmp_path / "prep"
    res = linflow(
        "split", "line", "--raw", str(line_data / "raw.npz"), "--out", str(out),
        params=write_params(tmp_path / "p.yaml", p),
    )  # fmt: skip
    line = one_error_line(res, "split")
    assert "split.val = 0.002 leaves an empty val split for the data (100 rows" in line
    assert not out.exists()


# --- data -----------------------------------------------------------------------------


def _raw(task="classification", **over) -> dict[str, np.ndarray]:
    n = 40
    a = {
        "task": np.array(task),
        "X": np.arange(n * 2, dtype=np.float32).reshape(n, 2),
        "y": np.arange(n) % 2
        if task == "classification"
        else np.linspace(0, 1, n, dtype=np.float32),
        "x_scale": np.array(1.0),
        "feature_names": np.array(["a", "b"]),
        "class_names": np.array(["no", "yes"] if task == "classification" else [], dtype=str),
    }
    a.update(over)
    return a


def _nan_X() -> np.ndarray:
    X = np.zeros((40, 2), dtype=np.float32)
    X[7, 1] = np.nan
    return X


BAD_DATA = [
    ("nan", _raw(X=_nan_X()), r"X has a non-finite value \(nan\) at row 7, column 1"),
    ("inf", _raw(X=np.full((40, 2), np.inf, np.float32)), r"X has a non-finite value \(inf\)"),
    ("dtype", _raw(X=np.full((40, 2), "a")), "X must be a 2-D float or uint8 array"),
    ("label-range", _raw(y=np.arange(40) % 3), r"labels must be in \[0, 2\) for 2 classes"),
    ("float-labels", _raw(y=np.zeros(40, np.float32)), "classification labels must be integers"),
    ("nan-target", _raw("regression", y=np.full(40, np.nan, np.float32)), "y has a non-finite"),
    ("task", _raw("regression"), "holds regression data but datasets.toy.task is classification"),
    ("rare-class", _raw(y=np.r_[np.zeros(38, int), 1, 1]), "leaves an empty val split for class 1"),
]


@pytest.mark.parametrize(
    ("raw", "message"), [c[1:] for c in BAD_DATA], ids=[c[0] for c in BAD_DATA]
)
def test_bad_raw_data_is_refused_by_split(tmp_path, base_params, raw, message):
    p = copy.deepcopy(base_params)
    p["datasets"]["toy"] = {"source": "digits", "task": "classification", "standardize": True}
    save_npz(tmp_path / "raw.npz", **raw)
    out = tmp_path / "prep"
    res = linflow(
        "split", "toy", "--raw", str(tmp_path / "raw.npz"), "--out", str(out),
        params=write_params(tmp_path / "p.yaml", p),
    )  # fmt: skip
    line = one_error_line(res, "split")
    assert str(tmp_path / "raw.npz") in line or "split." in line
    assert re.search(message, line), line
    assert not out.exists()


def _with_nan(a):
    X = a["X"].copy()
    X[3, 0] = np.nan
    return {"X": X}


@pytest.mark.parametrize(
    ("which", "change", "message"),
    [
        ("train", _with_nan, r"train\.npz: X has a non-finite value \(nan\) at row 3, column 0"),
        ("val", lambda a: {"y": np.full_like(a["y"], np.inf)}, r"val\.npz: y has a non-finite"),
        ("train", lambda a: {"task": np.array("classification")}, r"train\.npz: classification"),
    ],
    ids=["nan-features", "inf-targets", "task-label-mismatch"],
)
def test_bad_prepared_data_stops_train_before_training(
    tmp_path, line_data, base_params, which, change, message
):
    import re
    import shutil

    prep = tmp_path / "prep"
    shutil.copytree(line_data / "prep", prep)
    good = load_npz(prep / f"{which}.npz")
    save_npz(prep / f"{which}.npz", **{**good, **change(good)})
    res = _train(prep, tmp_path / "out", write_params(tmp_path / "p.yaml", base_params))
    assert re.search(message, one_error_line(res, "train"))
    assert not (tmp_path / "out").exists()  # no weights, no history, not even the folders
    assert "train line:" not in res.stderr  # stopped before the first training log line


def test_same_seed_same_bytes_other_seed_other_data(tmp_path, line_data, base_params):
    def stages(seed: int, tag: str) -> dict[str, bytes]:
        p = copy.deepcopy(base_params)
        p["seed"] = seed
        params = write_params(tmp_path / f"{tag}.yaml", p)
        d = tmp_path / tag
        assert (
            linflow("prepare", "line", "--out", str(d / "raw.npz"), params=params).returncode == 0
        )
        res = linflow(
            "split", "line", "--raw", str(d / "raw.npz"), "--out", str(d / "p"), params=params
        )
        assert res.returncode == 0, res.stderr
        return {str(f.relative_to(d)): f.read_bytes() for f in sorted(d.rglob("*.*"))}

    a, b, c = stages(0, "a"), stages(0, "b"), stages(1, "c")
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a if k.endswith(".npz"))
    # ... and the pipeline's own data: the same bytes as the prepared fixture
    assert a["raw.npz"] == (line_data / "raw.npz").read_bytes()


def test_split_indices_are_disjoint_and_cover_every_row(line_data):
    parts = [load_npz(line_data / "prep" / f"{s}.npz")["index"] for s in ("train", "val", "test")]
    assert all(np.intersect1d(a, b).size == 0 for i, a in enumerate(parts) for b in parts[i + 1 :])
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(100))
    assert [p.size for p in parts] == [70, 15, 15]


# --- the filesystem --------------------------------------------------------------------


def _assert_cannot_write(res, stage: str, target: Path, reason: str) -> None:
    line = one_error_line(res, stage)
    assert line == f"linflow {stage}: error: cannot write {target}: {reason}", line
    assert not target.exists()
    assert not list(target.parent.glob("*.tmp")) if target.parent.exists() else True


@contextlib.contextmanager
def tiny_filesystem(size: str = "8k"):
    """A real, nearly full filesystem: a tmpfs of `size` (needs root, as on this machine)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = Path(tempfile.mkdtemp(prefix="linflow-full-"))
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        mnt.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
        mnt.rmdir()


def test_disk_full_is_one_line_naming_the_output_and_leaves_nothing(tmp_path):
    with tiny_filesystem("8k") as mnt:  # two pages; synthetic's raw npz is ~12 kB
        target = mnt / "raw" / "synthetic.npz"
        res = linflow("prepare", "synthetic", "--out", str(target))
        _assert_cannot_write(res, "prepare", target, "No space left on device")
        assert files_under(mnt) == ["raw"]


def test_write_failing_mid_file_leaves_no_partial_file(tmp_path):
    """A kernel-level write failure half-way (file size limit), portable to any Linux user."""

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    target = tmp_path / "out" / "synthetic.npz"
    cmd = [sys.executable, "-m", "linflow", "prepare", "synthetic", "--out", str(target)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, preexec_fn=limit)
    _assert_cannot_write(res, "prepare", target, "File too large")
    assert files_under(tmp_path / "out") == []


def _without_root_override():
    """As root, drop the capabilities that ignore permission bits (for the child only)."""
    if os.geteuid() != 0:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: gone after exec
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_read_only_output_folder_is_one_line_naming_the_output(tmp_path):
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    target = ro / "line.npz"
    try:
        res = subprocess.run(
            [sys.executable, "-m", "linflow", "prepare", "line", "--out", str(target)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            preexec_fn=_without_root_override,
        )
    finally:
        ro.chmod(0o755)
    _assert_cannot_write(res, "prepare", target, "Permission denied")
    assert files_under(ro) == []


def test_an_output_path_that_is_a_folder(tmp_path):
    target = tmp_path / "line.npz"
    target.mkdir()
    res = linflow("prepare", "line", "--out", str(target))
    assert (
        one_error_line(res, "prepare")
        == f"linflow prepare: error: cannot write {target}: Is a directory"
    )
    assert files_under(tmp_path) == ["line.npz"]


# --- security --------------------------------------------------------------------------


def test_npz_with_a_pickled_object_array_is_refused(tmp_path):
    from linflow.core.storage import DataError

    np.savez(tmp_path / "evil.npz", X=np.array([{"a": 1}], dtype=object))  # pickles the dict
    with pytest.raises(DataError, match=r"evil\.npz: not a readable npz file \(.*allow_pickle"):
        load_npz(tmp_path / "evil.npz")


def test_make_ui_binds_localhost_only():
    res = subprocess.run(["make", "-n", "ui"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    text = res.stdout.replace("\\\n", " ")  # the recipe continues over lines
    (cmd,) = [ln for ln in text.splitlines() if "mlflow ui" in ln]
    assert "--host 127.0.0.1" in cmd and "0.0.0.0" not in res.stdout


def test_make_ui_with_its_port_taken_fails_naming_the_port():
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        res = subprocess.run(
            ["make", "--no-print-directory", "ui", f"UI_PORT={port}"],
            capture_output=True, text=True, cwd=ROOT, timeout=120,
        )  # fmt: skip
    assert res.returncode != 0
    assert f"make ui: port {port} on 127.0.0.1 is in use" in res.stderr
    assert "mlflow" not in res.stdout  # the server never started
