"""Streamed tables (issue 24 items 3, 4 and 6), side by side in one run.

1. Speed near the I/O floor, on a table that fits (default 2,000,000 rows x 32 float32
   columns, 264 MB as float32, Parquet row groups of 131,072 rows), every repetition
   running each arm once, interleaved; medians:
   - an epoch of minibatch SGD (batch 1024) and a full-batch epoch, streamed
     (StreamBatches over the prepared split: Parquet decode, the split's rows, scaling)
     against the same epoch of ``fit`` on the same train rows held in memory.
     Goal: streamed at most 1.5x in memory;
   - the streamed minibatch epoch against pyarrow just reading the file
     (``pq.read_table``, all columns, its default threads). Goal: at most 2x;
   - the streamed references against the in-memory ones on the same rows:
     regression, the normal equations summed over row groups vs
     ``reference.fit_normal_equations``; classification (a 4-class table of the same
     size), streamed L-BFGS vs ``reference.fit_logistic_regression``. Goal: at most 3x.
2. Bounded memory (``--big-rows``, default 20,000,000 rows x 32 float32 columns:
   2.6 GB as float32): a copy of the repository whose only dataset is that table
   (``data.stream: true``, ``data.budget_mb: 1024``) runs ``dvc repro`` inside a
   memory cgroup of ``--limit-mb`` (default 2048, where the kernel allows one: a
   machine with 2 GiB); every stage's peak RSS from its log line, wall times, and the
   reference comparison. Then the same table in the in-memory mode
   (``data.stream: false``) under the same limit, and what happened to it.

Writes benchmarks/results/stream.json and prints it. ``make bench-stream`` (~10 min;
the tables go to data/cache/bench/, ~3 GB, made once).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

GOALS = {"epoch_vs_in_memory": 1.5, "epoch_vs_pyarrow_read": 2.0, "reference_vs_in_memory": 3.0}
CACHE = ROOT / "data" / "cache" / "bench"
CGROUP = Path("/sys/fs/cgroup/memory")


def _table(path: Path, rows: int, task: str) -> Path:
    from linflow.datasets.examples import write_large

    if not path.is_file():
        t0 = time.perf_counter()
        write_large(path, rows, 32, task, classes=4, group_rows=1 << 17)
        print(f"wrote {path} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return path


def _prepared(work: Path, name: str, table: Path, task: str, budget: int = 1024):
    """prepare + split of `table` in `work` (in this process), its StreamSplit."""
    import yaml

    from linflow import stages
    from linflow.core.chunks import StreamSplit
    from linflow.core.config import parse_params

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["datasets"] = {
        name: {
            "source": "table", "path": str(table), "task": task, "standardize": True,
            "data": {"target": "y", "stream": True, "budget_mb": budget},
        }
    }  # fmt: skip
    params = parse_params(raw)
    cwd = os.getcwd()
    os.chdir(work)
    try:
        for stage in ("prepare", "split"):
            mod = stages.load(stage)
            import argparse as ap

            p = ap.ArgumentParser()
            mod.add_arguments(p)
            mod.run(p.parse_args([name]), params)
        return StreamSplit(work / "data" / "prepared" / name), params
    finally:
        os.chdir(cwd)


def _arrays(split, which: str):
    parts = list(split.iter(which))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def speed(rows: int, reps: int) -> dict:
    import pyarrow.parquet as pq
    import torch

    from linflow import reference, streaming
    from linflow.training import fit, make_engine
    from linflow.training.stream import StreamBatches

    torch.set_num_threads(1)
    CACHE.mkdir(parents=True, exist_ok=True)
    reg = _table(CACHE / f"reg-{rows}.parquet", rows, "regression")
    cls = _table(CACHE / f"cls-{rows}.parquet", rows, "classification")
    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    out: dict = {"rows": rows, "features": 32, "row_group_rows": 1 << 17, "torch_threads": 1}
    try:
        split, params = _prepared(work, "reg", reg, "regression")
        csplit, cparams = _prepared(work, "cls", cls, "classification")
        X, y = _arrays(split, "train")
        Xv, yv = split.cache("val", 10**9)
        Xc, yc = _arrays(csplit, "train")
        out["train_rows"] = int(X.shape[0])
        base = params.train_config("reg")
        arms: dict[str, list[float]] = {}

        def timed(name, fn):
            t0 = time.perf_counter()
            result = fn()
            arms.setdefault(name, []).append(time.perf_counter() - t0)
            return result

        def epochs(batch, streamed):
            """3 epochs; the seconds of epochs 2-3 (steady state: a streamed epoch reads its
            first buffer while the last one trains) go to the arm, the first's apart."""
            cfg = base.model_copy(update={"epochs": 3, "batch_size": batch, "lr": 0.01 if batch != "full" else 0.45})  # fmt: skip
            engine = make_engine("torch", "regression", 32, 1, cfg)
            Xvt, yvt = torch.from_numpy(Xv[:1000]), torch.from_numpy(yv[:1000])
            name = f"epoch_{batch}_{'streamed' if streamed else 'in_memory'}"
            if streamed:
                stream = StreamBatches(
                    split.counts["train"], lambda c: split.read(c, ("train",))["train"], batch,
                    0, split.budget // 8 // split.row_bytes(), epochs=cfg.epochs, features=32,
                )  # fmt: skip
                try:
                    res = fit(engine, None, None, Xvt, yvt, cfg, stream=stream)
                finally:
                    stream.close()
            else:
                res = fit(engine, torch.from_numpy(X), torch.from_numpy(y), Xvt, yvt, cfg)
            arms.setdefault(name, []).extend(res.seconds_per_epoch[1:])
            arms.setdefault(name + "_first", []).append(res.seconds_per_epoch[0])

        def ref_stream_reg():
            s = streaming.NormalSums(32)
            for Xa, ya in split.iter("train"):
                s.update(Xa, ya)
            return s.solve(0.0)

        def ref_cls_in_memory():
            return reference.fit_logistic_regression(Xc, yc, 4, wd, rc.max_iter, rc.tol)

        def ref_cls_streamed():
            from linflow.stages.reference import SAMPLE_ROWS

            sample = csplit.cache(
                "train", min(SAMPLE_ROWS, csplit.budget // 8 // csplit.row_bytes())
            )
            return streaming.fit_softmax_streamed(
                lambda: csplit.iter("train"), Xc.shape[0], 32, 4, wd, rc.max_iter, rc.tol,
                sample=sample,
            )  # fmt: skip

        rc = cparams.reference
        wd = cparams.train_config("cls").weight_decay
        cwd = os.getcwd()
        os.chdir(work)
        try:
            for rep in range(reps):
                print(f"rep {rep + 1}/{reps}", file=sys.stderr)
                timed("pyarrow_read", lambda: pq.read_table(reg))
                for batch in (1024, "full"):
                    epochs(batch, False)
                    epochs(batch, True)
                timed(
                    "reference_regression_in_memory", lambda: reference.fit_normal_equations(X, y)
                )
                timed("reference_regression_streamed", ref_stream_reg)
                if rep == 0:  # the lbfgs fits take a while: once
                    skl = timed("reference_classification_in_memory", ref_cls_in_memory)
                    W, b, nit, *_ = timed("reference_classification_streamed", ref_cls_streamed)
                    Xt, _ = _arrays(csplit, "test")
                    j = [
                        reference.objective(Xc, yc, *wb, "cross_entropy", wd)[1]
                        for wb in ((W, b), (skl.weight, skl.bias))
                    ]
                    agree = (Xt @ W.T + b).argmax(1) == (Xt @ skl.weight.T + skl.bias).argmax(1)
                    out["classification_reference"] = {
                        "streamed_lbfgs_iterations": nit,
                        "in_memory_iterations": skl.n_iter,
                        "agreement": float(np.mean(agree)),
                        "objective_rel_diff": abs(j[0] - j[1]) / j[1],
                    }
        finally:
            os.chdir(cwd)
        med = {k: statistics.median(v) for k, v in arms.items()}
        out["seconds_median"] = med
        out["seconds_all"] = arms
        out["ratios"] = {
            "epoch_1024_vs_in_memory": med["epoch_1024_streamed"] / med["epoch_1024_in_memory"],
            "epoch_full_vs_in_memory": med["epoch_full_streamed"] / med["epoch_full_in_memory"],
            "epoch_1024_vs_pyarrow_read": med["epoch_1024_streamed"] / med["pyarrow_read"],
            "epoch_full_vs_pyarrow_read": med["epoch_full_streamed"] / med["pyarrow_read"],
            "reference_regression_vs_in_memory": med["reference_regression_streamed"]
            / med["reference_regression_in_memory"],  # fmt: skip
            "reference_classification_vs_in_memory": med["reference_classification_streamed"]
            / med["reference_classification_in_memory"],  # fmt: skip
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _copy_repo(dest: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode().split("\0")  # fmt: skip
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "copy"]):  # fmt: skip
        subprocess.run(cmd, cwd=dest, check=True)
    return dest


def _in_cgroup(limit_mb: int):
    """A preexec_fn putting the child into a fresh memory cgroup of limit_mb (or None)."""
    group = CGROUP / f"linflow-bench-{os.getpid()}"
    try:
        group.mkdir(exist_ok=True)
        (group / "memory.limit_in_bytes").write_text(str(limit_mb * 2**20))
        with contextlib.suppress(OSError):  # no swap accounting: no swap here either
            (group / "memory.memsw.limit_in_bytes").write_text(str(limit_mb * 2**20))
    except OSError:
        return None, None

    def enter():
        (group / "cgroup.procs").write_text(str(os.getpid()))

    return enter, group


def memory(rows: int, limit_mb: int) -> dict:
    import yaml

    CACHE.mkdir(parents=True, exist_ok=True)
    table = _table(CACHE / f"reg-{rows}.parquet", rows, "regression")
    out: dict = {"rows": rows, "features": 32, "float32_gb": rows * 33 * 4 / 1e9,
                 "file_gb": table.stat().st_size / 1e9, "budget_mb": 1024}  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="bench-stream-repo-"))
    enter, group = _in_cgroup(limit_mb)
    out["memory_limit_mb"] = limit_mb if enter else None
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'repo' / 'mlflow.db'}"
    try:
        repo = _copy_repo(work / "repo")
        params = yaml.safe_load((repo / "params.yaml").read_text())
        entry = {
            "source": "table", "path": str(table), "task": "regression", "standardize": True,
            "data": {"target": "y", "stream": True, "budget_mb": 1024},
            "split": {"train": None, "val": None, "test": None},
            # Full batch at lr 0.45: the standardised columns are independent (Hessian ~2 I).
            "train": {**params["datasets"]["line"]["train"], "lr": 0.45, "epochs": 6},
        }  # fmt: skip
        params["datasets"] = {"big": entry}
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        t0 = time.perf_counter()
        res = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True, preexec_fn=enter)  # fmt: skip
        out["dvc_repro_seconds"] = time.perf_counter() - t0
        out["dvc_repro_exit"] = res.returncode
        log = res.stdout + res.stderr
        out["stages"] = {
            m.group(1): {"peak_rss_mib": float(m.group(2))}
            for m in re.finditer(r"linflow INFO: (\w+) big: .*?peak RSS (\d+) MiB", log)
        }
        times = re.findall(r"train big: (\d+) epochs in ([\d.]+) s \(([\d.]+) s/epoch", log)
        if times:
            out["train_seconds_per_epoch"] = float(times[-1][2])
        if res.returncode:
            out["log_tail"] = log[-3000:]
        compare = repo / "reports" / "big" / "compare.json"
        if compare.is_file():
            doc = json.loads(compare.read_text())
            out["compare_passed"] = doc["passed"]
            out["compare_checks"] = {k: v["value"] for k, v in doc["checks"].items()}
        # The same table in memory, under the same limit.
        entry["data"] = {"target": "y", "stream": False, "max_memory_mb": 10**6}
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        t0 = time.perf_counter()
        res = subprocess.run(["linflow", "prepare", "big"], cwd=repo, env=env, capture_output=True, text=True, preexec_fn=enter)  # fmt: skip
        out["in_memory_prepare"] = {
            "exit": res.returncode,
            "seconds": time.perf_counter() - t0,
            "what": "killed by the kernel (out of memory)"
            if res.returncode in (-9, 137)
            else (res.stderr.strip().splitlines() or [""])[-1],  # fmt: skip
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if group is not None:
            with contextlib.suppress(OSError):
                group.rmdir()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--big-rows", type=int, default=20_000_000)
    ap.add_argument("--limit-mb", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", choices=("speed", "memory"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "stream.json"))
    args = ap.parse_args()
    from machine import cpu_model

    result: dict = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "load_avg": os.getloadavg()}, "goals": GOALS}  # fmt: skip
    if args.only != "memory":
        result["speed"] = speed(args.rows, args.reps)
    if args.only != "speed":
        result["memory"] = memory(args.big_rows, args.limit_mb)
    text = json.dumps(result, indent=2, sort_keys=True, default=float)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
