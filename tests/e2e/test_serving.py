"""The registered champion behind `mlflow models serve`, as a user would call it.

In a copy of the session's reproduced repo (its mlflow.db holds every dataset's
registered model, champion set by compare), the real scoring server answers
`dataframe_split` rows of the test split with `linflow predict`'s numbers, for a
classification (digits) and a regression (diabetes) dataset; rows that do not fit
the signature get a 4xx with a readable message, and the server keeps answering.

Marked `ci`: each server takes ~10 s to start; run by `make test-ci` and CI.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from linflow.core.storage import load_npz

from .helpers import clone_reproduced, pipeline_env, run
from .servers import MLFLOW, free_port, wait_healthy

pytestmark = [pytest.mark.slow, pytest.mark.ci]


@pytest.fixture(scope="module")
def repo(reproduced, tmp_path_factory):
    return clone_reproduced(reproduced[0], tmp_path_factory.mktemp("serving") / "repo")


@contextlib.contextmanager
def model_server(repo: Path, dataset: str):
    port = free_port()
    log = repo / f"serve-{dataset}.log"
    env = pipeline_env(MLFLOW_TRACKING_URI=f"sqlite:///{repo / 'mlflow.db'}")
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(MLFLOW), "models", "serve", "-m", f"models:/linflow-{dataset}@champion",
             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
            cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log, 120, f"mlflow models serve ({dataset})")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            return res.status, json.loads(res.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _test_rows(repo: Path, dataset: str) -> tuple[list[str], list[list[float]]]:
    raw = load_npz(repo / f"data/raw/{dataset}.npz")
    index = load_npz(repo / f"data/prepared/{dataset}/test.npz")["index"]
    return [str(f) for f in raw["feature_names"]], raw["X"][index].astype(float).tolist()


@pytest.mark.parametrize("dataset", ["digits", "diabetes"])
def test_the_served_champion_answers_with_linflow_predicts_numbers(repo, dataset, tmp_path):
    columns, data = _test_rows(repo, dataset)
    rows = tmp_path / "rows.csv"
    with rows.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        w.writerows([[repr(v) for v in r] for r in data])
    scored = tmp_path / "scored.csv"
    run(["linflow", "predict", dataset, "--input", str(rows), "--output", str(scored)], repo)
    expected = list(csv.reader(scored.open()))
    with model_server(repo, dataset) as url:
        status, answer = post(url, {"dataframe_split": {"columns": columns, "data": data}})
        assert status == 200, answer
        got = answer["predictions"]
        assert len(got) == len(expected) - 1
        head = expected[0]
        for record, row in zip(got, expected[1:], strict=True):
            if dataset == "diabetes":
                assert repr(float(record["predicted"])) == row[0]  # the same float64
            else:
                assert record["predicted"] == row[0]
                assert [f"{record[c]:.6g}" for c in head[1:]] == row[1:]
        # Bad rows: a 4xx with a readable message, and the server keeps answering.
        status, answer = post(url, {"dataframe_split": {"columns": columns[1:], "data": [r[1:] for r in data[:3]]}})  # fmt: skip
        assert 400 <= status < 500 and columns[0] in answer.get("message", ""), answer
        bad = [["abc", *r[1:]] for r in data[:2]]
        status, answer = post(url, {"dataframe_split": {"columns": columns, "data": bad}})
        assert 400 <= status < 500 and answer.get("message"), answer
        status, answer = post(url, {"dataframe_split": {"columns": columns, "data": data[:2]}})
        assert status == 200 and len(answer["predictions"]) == 2
