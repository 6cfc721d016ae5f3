import json
import os

import numpy as np
import pytest

from linflow.core.storage import (
    DataError,
    atomic_path,
    load_npz,
    load_weights,
    read_json,
    save_npz,
    save_weights,
    write_json,
)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out" / "x.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert not target.exists()
    assert os.listdir(tmp_path / "out") == []


def test_atomic_write_keeps_previous_file_on_failure(tmp_path):
    target = tmp_path / "x.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert json.loads(target.read_text()) == {"a": 1}


def test_npz_is_byte_stable_and_roundtrips(tmp_path):
    arrays = {"X": np.arange(6, dtype=np.float32).reshape(3, 2), "task": np.array("regression")}
    save_npz(tmp_path / "a.npz", **arrays)
    save_npz(tmp_path / "b.npz", **arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    back = load_npz(tmp_path / "a.npz", required=("X", "task"))
    np.testing.assert_array_equal(back["X"], arrays["X"])
    assert back["task"].shape == () and str(back["task"]) == "regression"


def test_npz_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.npz: file not found"):
        load_npz(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="bad.npz: not a readable npz"):
        load_npz(tmp_path / "bad.npz")
    save_npz(tmp_path / "c.npz", X=np.zeros(2))
    with pytest.raises(DataError, match=r"c.npz: missing array\(s\) y"):
        load_npz(tmp_path / "c.npz", required=("X", "y"))


def test_json_sorted_and_non_finite_as_null(tmp_path):
    write_json(tmp_path / "m.json", {"b": float("nan"), "a": np.float32(1.5)})
    text = (tmp_path / "m.json").read_text()
    assert text.index('"a"') < text.index('"b"')
    assert read_json(tmp_path / "m.json") == {"a": 1.5, "b": None}


def test_weights_roundtrip_without_pickle_and_byte_stable(tmp_path):
    W = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([0.5, -1.0], dtype=np.float32)
    save_weights(tmp_path / "a.safetensors", {"weight": W, "bias": b}, {"task": "classification"})
    save_weights(tmp_path / "b.safetensors", {"bias": b, "weight": W}, {"task": "classification"})
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    tensors, meta = load_weights(tmp_path / "a.safetensors")
    np.testing.assert_array_equal(tensors["weight"], W)
    assert meta == {"task": "classification"}
    (tmp_path / "evil.safetensors").write_bytes(b"\x80\x04K\x01.")  # a pickle, not safetensors
    with pytest.raises(DataError, match="evil.safetensors: not a readable safetensors"):
        load_weights(tmp_path / "evil.safetensors")


def test_weights_bytes_are_stable_across_processes(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys, numpy as np; from linflow.core.storage import save_weights\n"
        "save_weights(sys.argv[1], {'weight': np.ones((2, 3), np.float32), 'bias': np.zeros(2, np.float32)},"
        " {'task': 'a', 'n_features': '3', 'n_outputs': '2', 'x': 'y'})\n"
    )
    outs = []
    for i in range(4):  # the old metadata layout differed between processes about half the time
        path = tmp_path / f"w{i}.safetensors"
        subprocess.run([sys.executable, "-c", code, str(path)], check=True)
        outs.append(path.read_bytes())
    assert len(set(outs)) == 1


def test_an_npz_header_claiming_1e11_rows_is_one_line_not_a_memory_error(tmp_path):
    import io
    import zipfile

    from linflow.core.errors import DataError
    from linflow.core.storage import load_npz

    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        member, {"descr": "|u1", "fortran_order": False, "shape": (10**11, 784)}
    )
    member.write(bytes(784 * 3))  # three rows' worth of data behind a 1e11-row header
    path = tmp_path / "train.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("X.npy", member.getvalue())
    with pytest.raises(DataError) as info:
        load_npz(path, required=("X",))
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: array 'X' claims shape (100000000000, 784)")
    assert msg.endswith("but the file holds 2352 (corrupt header)")
