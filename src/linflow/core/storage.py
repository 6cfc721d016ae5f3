"""Atomic, byte-stable file IO: npz, json, csv, weights, text, figures.

Every writer goes through :func:`atomic_path`: the bytes land in a temp file in
the destination folder and are renamed over the final path only when complete,
so a crash, a full disk or SIGKILL never leaves a half-written output that DVC
would accept. Writers are deterministic (fixed zip timestamps, sorted JSON
keys, no run ids), so the same inputs give the same bytes and dvc.lock is
stable across re-runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from linflow.core.errors import DataError, WriteError

__all__ = [
    "DataError",
    "WriteError",
    "atomic_path",
    "write_bytes",
    "write_text",
    "write_json",
    "read_json",
    "write_csv",
    "save_npz",
    "load_npz",
    "save_weights",
    "load_weights",
    "file_md5",
]

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path next to `path`; rename it onto `path` on success.

    On any exception the temp file is removed and `path` is left as it was; an
    OSError (no space left, permission denied, ...) becomes a :class:`WriteError`
    naming `path`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if isinstance(exc, OSError):
            raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _clean(obj: Any) -> Any:
    """Make numpy scalars/arrays JSON-native; refuse non-finite floats."""
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None  # JSON has no NaN; None is honest and parseable
    return obj


def dumps_json(obj: Any) -> str:
    return json.dumps(_clean(obj), indent=2, sort_keys=True) + "\n"


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, dumps_json(obj))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (run the stage that writes it)") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return str(v)


def write_csv(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    lines = [",".join(header)]
    lines += [",".join(_fmt(v) for v in row) for row in rows]
    write_text(path, "\n".join(lines) + "\n")


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Like np.savez, but byte-stable: fixed member timestamps, sorted names."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(
                member, np.asarray(arrays[name], order="C"), allow_pickle=False
            )
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    write_bytes(path, buf.getvalue())


def _check_npz_headers(path: Path) -> None:
    """Refuse an npz whose array headers claim more data than the file holds (a
    corrupt header claiming 1e11 rows would otherwise allocate hundreds of GiB)."""
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            with zf.open(info) as fh:
                major, _ = np.lib.format.read_magic(fh)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if major == 1
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read_header(fh)
                claimed = math.prod(shape) * dtype.itemsize
                holds = info.file_size - fh.tell()
                if claimed > holds:
                    raise DataError(
                        f"{path}: array {info.filename.removesuffix('.npy')!r} claims shape "
                        f"{shape} ({claimed} bytes) but the file holds {holds} (corrupt header)"
                    )


def load_npz(path: str | Path, required: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Load every array of an npz (no pickle); check the `required` names exist."""
    path = Path(path)
    try:
        _check_npz_headers(path)
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (run the stage that writes it)") from None
    except DataError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable npz file ({exc})") from None
    missing = [k for k in required if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing array(s) {', '.join(missing)}; has {sorted(arrays)}")
    return arrays


def save_weights(
    path: str | Path, tensors: Mapping[str, np.ndarray], meta: Mapping[str, str]
) -> None:
    """Write weights as safetensors (byte-stable, loadable without pickle)."""
    from safetensors.numpy import save

    # safetensors keeps metadata in a hash map whose order varies per process:
    # one key holding sorted JSON keeps the file's bytes stable.
    packed = {"linflow": json.dumps(dict(meta), sort_keys=True)}
    data = save({k: np.ascontiguousarray(v) for k, v in sorted(tensors.items())}, packed)
    write_bytes(path, data)


def load_weights(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file: (tensors, metadata). Never unpickles."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: weights file not found (run the train stage)")
    try:
        with safe_open(str(path), framework="numpy") as fh:
            raw_meta = dict(fh.metadata() or {})
            meta = json.loads(raw_meta["linflow"]) if "linflow" in raw_meta else raw_meta
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types
        raise DataError(f"{path}: not a readable safetensors file ({exc})") from None
    return tensors, meta


def file_md5(path: str | Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_yaml(text: str) -> Any:
    """yaml.safe_load, with libyaml's C parser where PyYAML has it: the same documents
    and errors (yaml.YAMLError with its problem_mark), ~10x faster. dvc.lock and
    params.yaml are parsed in most stages (0.28 s a stage with the pure-Python one)."""
    import yaml

    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
