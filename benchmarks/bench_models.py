"""What the MLflow Model costs and how fast it scores (issue 23 item 7), side by side.

Run after `make run` (it reads models/fashion_mnist, data/raw/fashion_mnist.npz and
the project's MLflow store). Every repetition runs each arm once, interleaved, so
machine noise hits the arms alike; figures are medians over the repetitions:

1. log + register: `TrainingRun.log_model` (the pyfunc model from code, its
   signature and input example, and its registry version) of models/fashion_mnist
   into a throwaway sqlite store, in this process, as the train stage calls it.
   Goal: at most 0.3 s.
2. Its share of a cold `dvc repro`: one fresh copy of the repository (git clone, no
   outputs, no run cache, its own store) runs the whole pipeline; every train stage
   logs "MLflow model logged in X s": their sum over the repro's wall time.
   Goal: at most 10%.
3. Scoring Fashion-MNIST's 10,000 test rows from a CSV of the raw columns (784
   pixels): `linflow predict` in this process (its imports paid, as in a warm
   process) against pandas.read_csv of that file plus one matrix product, and both
   again as fresh processes (imports included). Goal: predict within 2x.
4. The served model: `mlflow models serve -m models:/linflow-fashion_mnist@champion
   --env-manager local` on 127.0.0.1, 1,000 sequential single-row `dataframe_split`
   requests: latency p50 and p95.

Writes benchmarks/results/models.json and prints it. `make bench-models` (~4 min).
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import re
import shutil
import socket
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

GOALS = {"log_register_s": 0.3, "cold_repro_share": 0.10, "predict_vs_pandas": 2.0}
LINFLOW = str(Path(sys.executable).parent / "linflow")
MLFLOW = str(Path(sys.executable).parent / "mlflow")


def _log_register(tmp: Path, i: int) -> float:
    """Seconds of one log_model (+ register) of models/fashion_mnist into a fresh store."""
    from linflow.core import tracking
    from linflow.core.storage import file_md5, read_json

    model = ROOT / "models" / "fashion_mnist"
    example = read_json(ROOT / "data" / "prepared" / "fashion_mnist" / "example.json")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / f'store{i}.db'}"
    md5 = file_md5(model / "model.safetensors")
    with tracking.TrainingRun("fashion_mnist", "bench", {"a": 1}, {}) as run:
        t0 = time.perf_counter()
        run.log_model(model, "classification", example, {tracking.WEIGHTS_TAG: md5})
        return time.perf_counter() - t0


def _cold_repro(tmp: Path) -> dict:
    """One cold `dvc repro` in a fresh clone: wall seconds and the model-logging seconds."""
    repo = tmp / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("MLFLOW_TRACKING_URI", None)
    t0 = time.perf_counter()
    res = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"cold dvc repro failed:\n{res.stderr[-2000:]}")
    logged = [float(s) for s in re.findall(r"MLflow model logged in ([\d.]+) s", res.stderr)]
    return {"wall_s": wall, "model_logging_s": logged, "share": sum(logged) / wall}


def _test_csv(tmp: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """The 10,000 test rows as a CSV of the raw columns; (path, W, b)."""
    import pandas as pd

    from linflow.core.storage import load_npz, load_weights, read_json

    raw = load_npz(ROOT / "data" / "raw" / "fashion_mnist.npz")
    X = raw["X"][np.asarray(raw["is_test"], bool)]
    columns = read_json(ROOT / "data" / "prepared" / "fashion_mnist" / "example.json")["columns"]
    path = tmp / "test.csv"
    pd.DataFrame(X, columns=columns).to_csv(path, index=False)
    tensors, _ = load_weights(ROOT / "models" / "fashion_mnist" / "model.safetensors")
    return path, tensors["weight"], tensors["bias"]


PANDAS_ARM = (
    "import sys, numpy as np, pandas as pd\n"
    "from safetensors.numpy import load_file\n"
    "t = load_file(sys.argv[2])\n"
    "X = pd.read_csv(sys.argv[1]).to_numpy(np.float32)\n"
    "Z = X @ t['weight'].T + t['bias']\n"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_latency(csv_path: Path, n: int) -> dict:
    import pandas as pd

    port = _free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{ROOT / 'mlflow.db'}")
    proc = subprocess.Popen(
        [MLFLOW, "models", "serve", "-m", "models:/linflow-fashion_mnist@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/ping")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise SystemExit("mlflow models serve did not answer /ping in 120 s")
        rows = pd.read_csv(csv_path, nrows=n)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Content-Type": "application/json"}
        latency = []
        for i in range(n):
            body = json.dumps(
                {
                    "dataframe_split": {
                        "columns": list(rows.columns),
                        "data": [rows.iloc[i].tolist()],
                    }
                }
            )
            t0 = time.perf_counter()
            conn.request("POST", "/invocations", body, headers)
            resp = conn.getresponse()
            resp.read()
            latency.append(time.perf_counter() - t0)
            if resp.status != 200:
                raise SystemExit(f"/invocations answered {resp.status}")
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
    ms = np.asarray(latency) * 1000
    return {
        "requests": n,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "max_ms": float(ms.max()),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--skip-repro", action="store_true", help="skip the cold dvc repro (~2 min)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "models.json"))
    args = ap.parse_args()
    import pandas as pd
    from safetensors.numpy import save_file

    from linflow.cli import main as linflow_main
    from machine import cpu_model

    tmp = Path(tempfile.mkdtemp(prefix="linflow-bench-models-"))
    try:
        csv_path, W, b = _test_csv(tmp)
        weights = tmp / "w.safetensors"
        save_file({"weight": W, "bias": b}, str(weights))
        out = tmp / "pred.csv"
        argv = ["predict", "fashion_mnist", "--input", str(csv_path), "--output", str(out)]
        cwd = os.getcwd()
        os.chdir(ROOT)  # predict's default model is models/<ds> of the working folder

        def predict_here():
            assert linflow_main(argv) == 0

        def pandas_here():
            X = pd.read_csv(csv_path).to_numpy(np.float32)
            return X @ W.T + b

        def predict_fresh():
            subprocess.run([LINFLOW, *argv], check=True, capture_output=True, cwd=ROOT)

        def pandas_fresh():
            subprocess.run(
                [sys.executable, "-c", PANDAS_ARM, str(csv_path), str(weights)], check=True
            )

        stores = itertools.count()
        arms = {
            "log_register": lambda: _log_register(tmp, next(stores)),
            "predict_in_process": predict_here,
            "pandas_in_process": pandas_here,
            "predict_fresh_process": predict_fresh,
            "pandas_fresh_process": pandas_fresh,
        }
        for fn in arms.values():  # warm-up: imports, page cache
            fn()
        times: dict[str, list[float]] = {k: [] for k in arms}
        for _ in range(args.reps):
            for name, fn in arms.items():
                t0 = time.perf_counter()
                got = fn()
                took = time.perf_counter() - t0
                times[name].append(got if name == "log_register" else took)
        os.chdir(cwd)
        med = {k: statistics.median(v) for k, v in times.items()}
        result = {
            "cpu": cpu_model(),
            "reps": args.reps,
            "loadavg_1m": os.getloadavg()[0],
            "seconds": med,
            "all_seconds": times,
            "ratios": {
                "predict / pandas+matmul (in process)": med["predict_in_process"]
                / med["pandas_in_process"],
                "predict / pandas+matmul (fresh processes)": med["predict_fresh_process"]
                / med["pandas_fresh_process"],
            },
            "goals": GOALS,
        }
        result["serving"] = _serve_latency(csv_path, args.requests)
        if not args.skip_repro:
            result["cold_repro"] = _cold_repro(tmp)
        result["verdict"] = {
            "log_register <= 0.3 s": med["log_register"] <= GOALS["log_register_s"],
            "predict within 2x (in process)": result["ratios"][
                "predict / pandas+matmul (in process)"
            ]
            <= GOALS["predict_vs_pandas"],
        }
        if "cold_repro" in result:
            result["verdict"]["model logging <= 10% of a cold repro"] = (
                result["cold_repro"]["share"] <= GOALS["cold_repro_share"]
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("seconds", "ratios", "serving", "verdict")}, indent=2))
    if "cold_repro" in result:
        print(json.dumps(result["cold_repro"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
