"""The numeric platform: what decides the last bits of every float the pipeline computes.

Two machines produce bit-identical outputs when they run the same kernels: the
same vector ISA in torch (``ATEN_CPU_CAPABILITY``), the same MKL code path
(``MKL_CBWR``), the same SIMD dispatch in numpy (``NPY_DISABLE_CPU_FEATURES``),
the same OpenBLAS core type, the same library versions and thread counts. The
``report`` stage records this fingerprint in ``reports/platform.json`` (no host
name, no CPU model: two CPUs of one ISA compute alike), and ``linflow verify``
prints it beside this machine's to explain outputs that differ.

Reads the environment and the loaded libraries; writes nothing.
"""

from __future__ import annotations

import os
import platform as _platform
from collections.abc import Mapping
from typing import Any

from linflow.core.tracking import version

__all__ = ["fingerprint", "describe", "differences"]

# numpy's dispatch levels (numpy >= 2.4 names), most capable first.
_NUMPY_LEVELS = ("AVX512_SPR", "AVX512_ICL", "X86_V4", "X86_V3", "X86_V2", "ASIMD", "VSX")


def _numpy_simd() -> str:
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as features
    for level in _NUMPY_LEVELS:
        if features.get(level):
            return level
    return "baseline"


def _openblas() -> dict[str, str]:
    """Core type OpenBLAS runs, per library that bundles one (numpy's, scipy's)."""
    from threadpoolctl import threadpool_info

    out = {}
    for info in threadpool_info():
        if info.get("internal_api") == "openblas":
            lib = "scipy" if "scipy.libs" in info.get("filepath", "") else "numpy"
            out[lib] = str(info.get("architecture") or "unknown")
    return dict(sorted(out.items()))


def fingerprint(threads: Mapping[str, int]) -> dict[str, Any]:
    """The numeric platform of this process.

    threads : the thread counts the pipeline pins (train.threads, reference.threads)
    """
    import numpy  # noqa: F401  # loads numpy's OpenBLAS for threadpoolctl
    import scipy.linalg  # noqa: F401  # and scipy's
    import torch

    return {
        "machine": _platform.machine(),
        "torch_cpu": torch.backends.cpu.get_cpu_capability(),
        "mkl_cbwr": os.environ.get("MKL_CBWR", "auto"),
        "numpy_simd": _numpy_simd(),
        "openblas": _openblas(),
        "threads": dict(sorted(threads.items())),
        "versions": {
            "python": _platform.python_version(),
            **{d: version(d) for d in ("torch", "numpy", "scipy", "scikit-learn")},
        },
    }


def _flat(fp: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in fp.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """'key old -> new' for each entry where two fingerprints differ."""
    fa, fb = _flat(a), _flat(b)
    return [
        f"{k} {fa.get(k, '-')} -> {fb.get(k, '-')}"
        for k in sorted(set(fa) | set(fb))
        if fa.get(k) != fb.get(k)
    ]


def describe(fp: Mapping[str, Any]) -> str:
    """One line: 'x86_64, torch AVX2, MKL auto, numpy X86_V3, OpenBLAS Haswell, ...'."""
    blas = "/".join(sorted(set((fp.get("openblas") or {}).values()))) or "-"
    threads = ", ".join(f"{k} {v}" for k, v in (fp.get("threads") or {}).items())
    versions = fp.get("versions") or {}
    return (
        f"{fp.get('machine', '?')}, torch {fp.get('torch_cpu', '?')}, MKL {fp.get('mkl_cbwr', '?')}, "
        f"numpy {fp.get('numpy_simd', '?')}, OpenBLAS {blas}; threads {threads or '-'}; "
        f"torch {versions.get('torch', '?')}, numpy {versions.get('numpy', '?')}, "
        f"scipy {versions.get('scipy', '?')}, sklearn {versions.get('scikit-learn', '?')}"
    )
