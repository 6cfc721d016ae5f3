"""A user's table: `linflow prepare` + `linflow split` side by side with pandas / pyarrow.

Issue 22 item 9. A seeded table of 1,000,000 rows x 20 columns (17 numeric columns,
two of them with 0.1% empty cells; 2 categorical text columns of 3 and 2 levels; a
numeric regression target) is written once, as CSV and as Parquet, into a temporary
folder, with two copies of params.yaml whose entry `table` reads one file each
(`data.missing: impute`; one name, so both get the same split). Split encodes it into a float32 matrix of 1,000,000 x 20
(17 numbers + 2 + 1 one-hot columns): 80 MB, the yardstick of the memory goal.

Every repetition runs each arm once, interleaved, so machine noise hits all arms
alike; the figures are medians over the repetitions and the ratios are of medians:

- pandas.read_csv of the CSV, in this process (imports paid), and in a fresh process;
- `linflow prepare` and `linflow split` of the CSV, each a fresh process as a user
  (or DVC) runs them (LINFLOW_PRELOAD=0: no warm worker), timed whole, with the
  process's peak RSS (os.wait4);
- the two stages' run() called in this process: the stages' work without the start-up;
- pyarrow.parquet.read_table of the Parquet file, in this process and in a fresh one,
  and the same three stage arms for the Parquet file;
- a fresh process that imports what a table stage imports and exits (the floor of
  every process's time and memory).

The files are in the page cache for every arm (they were just written). Writes
benchmarks/results/tables.json (CPU, SIMD levels, versions, load average) and prints
a table. Run: `make bench-tables` (python benchmarks/bench_tables.py --reps 5, ~3 min).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
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

# Goals of issue 22 item 9: ratio (stages / yardstick) at most this.
GOALS = {"csv_time": 2.0, "parquet_time": 1.5, "memory": 3.0}
NUMERIC = 17
EMPTY_COLUMNS = (3, 7)  # numeric columns with 0.1% empty cells (imputed by split)
CATEGORIES = {"color": ("red", "green", "blue"), "region": ("north", "south")}
IMPORT_FLOOR = (
    "import numpy, pandas, pyarrow.csv, pyarrow.parquet, linflow.core.config, "
    "linflow.core.artifacts, linflow.datasets.table, linflow.stages.prepare, "
    "linflow.stages.split, linflow.transform"
)


from machine import cpu_model  # noqa: E402


def _cpu() -> dict[str, str]:
    """Which CPU and which kernels this ran on: parsing and copying speed depend on both."""
    model = cpu_model()
    import pyarrow as pa

    simd = np.__config__.CONFIG.get("SIMD Extensions", {})
    found = simd.get("found") or simd.get("baseline") or ["unknown"]
    return {
        "model": model,
        "cores": str(os.cpu_count()),
        "numpy_simd": found[-1],  # the highest level numpy dispatches to here
        "pyarrow_simd": pa.runtime_info().simd_level,
    }


def make_table(folder: Path, rows: int, seed: int) -> tuple[Path, Path]:
    """The seeded table as CSV (plain, unquoted, like a spreadsheet export) and Parquet."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 100.0, NUMERIC)
    X = rng.standard_normal((rows, NUMERIC)) * scale + rng.uniform(-50.0, 50.0, NUMERIC)
    codes = {name: rng.integers(0, len(levels), rows) for name, levels in CATEGORIES.items()}
    y = X @ (rng.standard_normal(NUMERIC) / 10) + rng.standard_normal(rows)
    y += 2.0 * codes["color"] - 1.5 * codes["region"]
    columns = {}
    for j in range(NUMERIC):
        empty = rng.random(rows) < 0.001 if j in EMPTY_COLUMNS else None
        columns[f"x{j}"] = pa.array(np.round(X[:, j], 4), mask=empty)
        if j == 8:  # categorical columns among the numbers, as in a real table
            columns["color"] = pa.array(np.array(CATEGORIES["color"])[codes["color"]])
        if j == 12:
            columns["region"] = pa.array(np.array(CATEGORIES["region"])[codes["region"]])
    columns["y"] = pa.array(np.round(y, 4))
    table = pa.table(columns)
    csv, parquet = folder / "table.csv", folder / "table.parquet"
    with open(csv, "wb") as fh:
        fh.write((",".join(table.column_names) + "\n").encode())
        options = pcsv.WriteOptions(include_header=False, quoting_style="none")
        pcsv.write_csv(table, fh, options)
    pq.write_table(table, parquet)
    return csv, parquet


ENTRY = "table"  # the dataset's name in both params files: the split's seed stream


def write_params(folder: Path, kind: str, table: Path) -> Path:
    """The project's params.yaml with one entry, the table (what add-dataset writes)."""
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"] = {
        ENTRY: {
            "source": "table",
            "path": str(table),
            "task": "regression",
            "data": {"target": "y", "categorical": list(CATEGORIES), "missing": "impute"},
            "standardize": True,
            "split": {"train": None, "val": None, "test": None},
            "train": {},
        }
    }
    path = folder / f"params_{kind}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _linflow() -> list[str]:
    script = Path(sys.executable).with_name("linflow")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from linflow.launch import main; sys.exit(main())"]


# Starts argv[2:] from this small process and writes "seconds peak_rss" to argv[1]. Linux
# keeps a process's peak RSS across exec, so a child started straight from the benchmark
# (hundreds of MB after the in-process arms) would report the benchmark's peak as its own.
MEASURE = """\
import os, subprocess, sys, time
t0 = time.perf_counter()
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
seconds = time.perf_counter() - t0
with open(sys.argv[1], "w") as fh:
    fh.write(f"{seconds} {usage.ru_maxrss}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def child(argv: list[str], folder: Path) -> tuple[float, int]:
    """(wall seconds, peak RSS in bytes) of one fresh process."""
    env = dict(os.environ, LINFLOW_PRELOAD="0")  # the stage runs in its process, not a worker
    log, figures = folder / "child.log", folder / "child.txt"
    with open(log, "wb") as err:
        code = subprocess.call(
            [sys.executable, "-c", MEASURE, str(figures), *argv],
            cwd=folder, env=env, stdout=err, stderr=err,
        )  # fmt: skip
    if code:
        raise SystemExit(f"{' '.join(argv)} failed:\n{log.read_text()}")
    seconds, peak = figures.read_text().split()
    return float(seconds), int(peak) * (1 if sys.platform == "darwin" else 1024)


def in_process(params, raw: Path, out: Path) -> float:
    """prepare + split of one entry through the stages' run(), as the tests call them."""
    from linflow import stages

    t0 = time.perf_counter()
    for stage, argv in (
        ("prepare", [ENTRY, "--out", str(raw)]),
        ("split", [ENTRY, "--raw", str(raw), "--out", str(out)]),
    ):
        module = stages.load(stage)
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        module.run(parser.parse_args(argv), params)
    seconds = time.perf_counter() - t0
    gc.collect()
    return seconds


def timed(fn) -> float:
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    del result
    gc.collect()
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=22)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/tables.json"))
    args = ap.parse_args()

    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from linflow.core.config import load_params

    load_start = os.getloadavg()[0]
    folder = Path(tempfile.mkdtemp(prefix="linflow-bench-tables-"))
    try:
        t0 = time.perf_counter()
        csv, parquet = make_table(folder, args.rows, args.seed)
        print(f"table written in {time.perf_counter() - t0:.1f} s to {folder}", flush=True)
        files = {"csv": csv, "parquet": parquet}
        params_path = {kind: write_params(folder, kind, path) for kind, path in files.items()}
        params = {kind: load_params(path) for kind, path in params_path.items()}

        def stage_children(kind: str) -> dict[str, tuple[float, int]]:
            linflow = [*_linflow(), "--params", str(params_path[kind])]
            raw, out = folder / f"{kind}.npz", folder / kind
            return {
                "prepare": child([*linflow, "prepare", ENTRY, "--out", str(raw)], folder),
                "split": child(
                    [*linflow, "split", ENTRY, "--raw", str(raw), "--out", str(out)], folder
                ),  # fmt: skip
            }

        read_csv_child = [sys.executable, "-c", "import sys, pandas; pandas.read_csv(sys.argv[1])"]
        read_pq_child = [sys.executable, "-c", "import sys, pyarrow.parquet as pq; pq.read_table(sys.argv[1])"]  # fmt: skip
        floor_child = [sys.executable, "-c", IMPORT_FLOOR]

        # Warm-up: the in-process arms' imports, and every file in the page cache.
        for kind in files:
            in_process(params[kind], folder / f"warm_{kind}.npz", folder / f"warm_{kind}")
        seconds: dict[str, list[float]] = {}
        rss: dict[str, list[int]] = {}

        def record(arm: str, s: float, peak: int | None = None) -> None:
            seconds.setdefault(arm, []).append(s)
            if peak is not None:
                rss.setdefault(arm, []).append(peak)

        for rep in range(args.reps):
            record("pandas.read_csv", timed(lambda: pd.read_csv(csv)))
            record("pandas.read_csv, fresh process", *child([*read_csv_child, str(csv)], folder))
            record("imports only, fresh process", *child(floor_child, folder))
            for kind in ("csv", "parquet"):
                if kind == "parquet":
                    record("pyarrow.parquet.read_table", timed(lambda: pq.read_table(parquet)))
                    arm = "pyarrow.parquet.read_table, fresh process"
                    record(arm, *child([*read_pq_child, str(parquet)], folder))
                procs = stage_children(kind)
                for stage, (s, peak) in procs.items():
                    record(f"{kind}: {stage}", s, peak)
                record(f"{kind}: prepare + split", sum(s for s, _ in procs.values()))
                s = in_process(params[kind], folder / f"in_{kind}.npz", folder / f"in_{kind}")
                record(f"{kind}: prepare + split, in this process", s)
            print(f"rep {rep + 1}/{args.reps} done, load {os.getloadavg()[0]:.2f}", flush=True)

        med = {arm: statistics.median(v) for arm, v in seconds.items()}
        peak = {arm: max(v) for arm, v in rss.items()}
        transform = json.loads((folder / "csv" / "transform.json").read_text())
        d = len(transform["feature_names"])
        matrix = args.rows * d * 4  # the float32 feature matrix split writes (train+val+test)
        same = all(
            (folder / "csv" / f).read_bytes() == (folder / "parquet" / f).read_bytes()
            for f in ("train.npz", "val.npz", "test.npz", "scaler.json")
        )
        pairs = {  # name: (the stages' arm, the yardstick's arm)
            "csv: prepare + split (processes) / pandas.read_csv": (
                "csv: prepare + split", "pandas.read_csv"),
            "csv: prepare + split (processes) / pandas.read_csv in a fresh process": (
                "csv: prepare + split", "pandas.read_csv, fresh process"),
            "csv: prepare + split (in this process) / pandas.read_csv": (
                "csv: prepare + split, in this process", "pandas.read_csv"),
            "parquet: prepare + split (processes) / pyarrow.parquet.read_table": (
                "parquet: prepare + split", "pyarrow.parquet.read_table"),
            "parquet: prepare + split (processes) / read_table in a fresh process": (
                "parquet: prepare + split", "pyarrow.parquet.read_table, fresh process"),
            "parquet: prepare + split (in this process) / pyarrow.parquet.read_table": (
                "parquet: prepare + split, in this process", "pyarrow.parquet.read_table"),
        }  # fmt: skip
        ratios = {name: med[a] / med[b] for name, (a, b) in pairs.items()}
        floor = peak["imports only, fresh process"]
        memory = {arm: peak[arm] / matrix for arm in peak}
        memory_above_floor = {arm: (peak[arm] - floor) / matrix for arm in peak}
        goals = {
            "csv time: prepare + split (processes) / pandas.read_csv": (
                ratios["csv: prepare + split (processes) / pandas.read_csv"],
                GOALS["csv_time"],
            ),
            "parquet time: prepare + split (processes) / pyarrow read_table": (
                ratios["parquet: prepare + split (processes) / pyarrow.parquet.read_table"],
                GOALS["parquet_time"],
            ),
        }
        for kind in ("csv", "parquet"):
            for stage in ("prepare", "split"):
                arm = f"{kind}: {stage}"
                goals[f"memory: {arm} peak RSS / float32 matrix"] = (memory[arm], GOALS["memory"])
        result = {
            "rows": args.rows,
            "columns": NUMERIC + len(CATEGORIES) + 1,
            "encoded_features": d,
            "seed": args.seed,
            "reps": args.reps,
            "csv_mb": csv.stat().st_size / 1e6,
            "parquet_mb": parquet.stat().st_size / 1e6,
            "float32_matrix_mb": matrix / 1e6,
            "cpu": _cpu(),
            "versions": {
                "python": platform.python_version(),
                "numpy": np.__version__,
                "pandas": pd.__version__,
                "pyarrow": pa.__version__,
            },
            "loadavg_1m": load_start,
            "loadavg_1m_end": os.getloadavg()[0],
            "all_seconds": seconds,
            "seconds": med,
            "peak_rss_mb": {arm: b / 1e6 for arm, b in peak.items()},
            "ratios": ratios,
            "memory_ratios": memory,
            "memory_ratios_above_imports": memory_above_floor,
            "goals": {k: {"ratio": r, "goal": g, "holds": r <= g} for k, (r, g) in goals.items()},
            "csv_and_parquet_give_the_same_splits": same,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        report(result, out)
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


def report(result: dict, out: Path) -> None:
    print(
        f"\n{result['rows']:,} rows x {result['columns']} columns: CSV {result['csv_mb']:.0f} MB, "
        f"Parquet {result['parquet_mb']:.0f} MB; float32 feature matrix "
        f"{result['rows']:,} x {result['encoded_features']} = {result['float32_matrix_mb']:.0f} MB; "
        f"medians of {result['reps']}"
    )
    peak, sec = result["peak_rss_mb"], result["seconds"]
    print(f"\n{'arm':58s} {'median s':>9s} {'peak RSS MB':>12s}")
    for arm, s in sec.items():
        rss = f"{peak[arm]:.0f}" if arm in peak else ""
        print(f"{arm:58s} {s:9.2f} {rss:>12s}")
    print(f"\n{'ratio':76s} {'value':>6s}")
    for name, r in result["ratios"].items():
        print(f"{name:76s} {r:6.2f}")
    for arm, r in result["memory_ratios"].items():
        above = result["memory_ratios_above_imports"][arm]
        print(
            f"{'peak RSS / float32 matrix: ' + arm:76s} {r:6.2f}  ({above:.2f} above the imports)"
        )
    print(f"\n{'goal':76s} {'ratio':>6s} {'goal':>5s}")
    for name, g in result["goals"].items():
        verdict = "holds" if g["holds"] else "NOT MET"
        print(f"{name:76s} {g['ratio']:6.2f} {g['goal']:5.1f}  {verdict}")
    cpu = result["cpu"]
    print(
        f"\ncpu: {cpu['model']} ({cpu['cores']} cores), numpy {cpu['numpy_simd']}, "
        f"pyarrow {cpu['pyarrow_simd']}; splits from CSV and Parquet identical: "
        f"{result['csv_and_parquet_give_the_same_splits']}"
    )
    print(
        f"load average (1 min): {result['loadavg_1m']:.2f} at the start, "
        f"{result['loadavg_1m_end']:.2f} at the end; written {out}"
    )


if __name__ == "__main__":
    sys.exit(main())
