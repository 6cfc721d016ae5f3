"""The numeric platform fingerprint and the portability report (no pipeline run)."""

from __future__ import annotations

import json
import subprocess
import sys

from linflow.verify.check import Report, Row
from linflow.verify.platform import describe, differences, fingerprint
from linflow.verify.portability import VARIANTS, render, spreads


def _fingerprint_in(env: dict) -> dict:
    code = (
        "import json; from linflow.verify.platform import fingerprint; "
        "print(json.dumps(fingerprint({'train': 1})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)


def test_fingerprint_names_kernels_versions_and_threads_but_no_host():
    import os
    import socket

    fp = fingerprint({"train": 1, "reference": 2})
    assert fp["torch_cpu"] in ("DEFAULT", "AVX2", "AVX512", "ZVECTOR", "VSX", "NO AVX")
    assert fp["threads"] == {"reference": 2, "train": 1}
    assert set(fp["versions"]) == {"python", "torch", "numpy", "scipy", "scikit-learn"}
    assert socket.gethostname() not in json.dumps(fp)
    assert fp["mkl_cbwr"] == os.environ.get("MKL_CBWR", "auto")


def test_an_emulated_cpu_has_another_fingerprint():
    import os

    base = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR")}
    here = _fingerprint_in(base)
    other = _fingerprint_in({**base, **VARIANTS["all"]})
    assert other["torch_cpu"] == "DEFAULT" and other["mkl_cbwr"] == "COMPATIBLE"
    diff = differences(here, other)
    assert any(d.startswith("mkl_cbwr auto -> COMPATIBLE") for d in diff)
    assert differences(here, here) == []


def test_describe_is_one_line():
    fp = fingerprint({"train": 1})
    text = describe(fp)
    assert "\n" not in text and f"torch {fp['torch_cpu']}" in text


def _doc(ok=True, moves=(), failed_row=None):
    numbers = [
        {"key": k, "committed": 0.5, "now": 0.5 + d, "allowed": a, "rule": "r"} for k, d, a in moves
    ]
    outputs = [{"path": "reports/x/metrics.json", "status": "within tolerance", "detail": "",
                "failed": False, "numbers": numbers}]  # fmt: skip
    if failed_row:
        outputs.append(failed_row)
    return {"ok": ok, "counts": {"within tolerance": 1}, "outputs": outputs, "problems": []}


def test_spreads_keep_the_largest_move_per_number_over_the_variants():
    results = {
        "a": _doc(moves=[("test.accuracy", 0.001, 0.003), ("test.r2", 0.0, 1e-4)]),
        "b": _doc(moves=[("test.accuracy", 0.002, 0.003), ("test.r2", 1e-5, 1e-4)]),
    }
    got = {s.where: s for s in spreads(results)}
    acc = got["reports/x/metrics.json:test.accuracy"]
    assert acc.variant == "b" and abs(acc.share - 2 / 3) < 1e-9
    assert list(got)[0].endswith("test.accuracy")  # largest share first
    text, ok = render(results, {"a": 10.0, "b": 12.0})
    assert ok and "!" in text.split("test.accuracy")[1].splitlines()[0]  # over a third
    assert text.splitlines()[-1].startswith("portability OK: 2 variants; largest move 67%")


def test_a_failing_variant_fails_the_run_and_shows_the_row():
    bad = {"path": "reports/x/gaps.json", "status": "drifted", "detail": "agreement 0.99 -> 0.9",
           "failed": True, "numbers": []}  # fmt: skip
    text, ok = render({"a": _doc(), "b": _doc(ok=False, failed_row=bad)}, {})
    assert not ok
    assert "reports/x/gaps.json  drifted  agreement 0.99 -> 0.9" in text
    assert text.splitlines()[-1].startswith("portability FAILED")


def test_verify_report_explains_differences_by_the_platform():
    here = fingerprint({"train": 1})
    # The "other" platform derives from this one: on an AVX-512 machine a fake AVX512
    # would equal the real one (and emulation cannot raise a CPU to AVX-512, only lower it).
    theirs = "AVX2" if here["torch_cpu"] == "AVX512" else "AVX512"
    other = {**here, "torch_cpu": theirs}
    rows = [Row("models/line", "train@line", "differs", "md5 a -> b")]
    text = Report(rows, [], committed_platform=other, platform=here).render()
    assert "Numeric platform: committed" in text and f"torch {theirs}" in text
    assert f"1 outputs differ as expected across platforms (torch_cpu {theirs} -> " in text
    same = Report(rows, [], committed_platform=here, platform=here).render()
    assert "the same platform, so outputs that differ point at nondeterminism" in same
    doc = Report(rows, [], committed_platform=other, platform=here).to_json()
    assert doc["ok"] and doc["outputs"][0]["status"] == "differs"
