"""Where users look, in a real browser: the MLflow UI and `dvc plots show`'s page.

Headless Debian chromium (selenium + chromium-driver) drives the real MLflow UI,
started on a free 127.0.0.1 port the way `make ui` starts it, over a temporary
store made by two experiments as a learner makes them: `linflow train digits`
with params.yaml's lr changed from the committed value to 0.2, then to 0.4 (each
followed by `linflow evaluate digits`). It checks what a user must see: both runs
named after their changed param, with test accuracy and lr in the runs table;
the compare view with the changed param and tag and the test accuracies; and the
two val_loss curves overlaid, point for point what the runs logged. Then it
opens `dvc plots show`'s page from file:// with the browser's network off and
checks every Vega chart drew (the libraries are inlined by the project's HTML
template, .dvc/plots/offline.html). Screenshots go to test-artifacts/mlflow-ui/.

Without chromium, chromedriver or selenium the test skips, except under CI
(env CI set: .ci/run sets it), where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .servers import free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "mlflow-ui"
MLFLOW = Path(sys.executable).parent / "mlflow"
DVC = Path(sys.executable).parent / "dvc"
LRS = ("0.2", "0.4")  # params.yaml commits train.classification.lr 0.3
WAIT_S = 90  # the UI's first page load takes ~30 s on a loaded 2-core machine

pytestmark = pytest.mark.ci  # ~1-2 min of real processes: make test-ci and CI


def _browser_or_skip():
    """(chromium, chromedriver) paths; skip without them, fail under CI."""
    missing = [b for b in ("chromium", "chromedriver") if shutil.which(b) is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        why = f"{', '.join(missing)} not installed (apt-get install chromium chromium-driver; pip install -e '.[dev]')"
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the browser test: {why}")
        pytest.skip(why)
    return shutil.which("chromium"), shutil.which("chromedriver")


# One process for the whole learner's sequence: each `linflow` start imports torch
# and mlflow (~5-10 s here), so six of them would take a minute.
TRAIN_TWICE = """
import sys, yaml
from linflow.cli import main

def linflow(*argv):
    if main(list(argv)) != 0:
        sys.exit(f"linflow {' '.join(argv)} failed")

linflow("prepare", "digits")
linflow("split", "digits")
for lr in sys.argv[1:]:
    raw = yaml.safe_load(open("params.yaml"))
    raw["train"]["classification"]["lr"] = float(lr)
    open("params.yaml", "w").write(yaml.safe_dump(raw, sort_keys=False))
    linflow("train", "digits")
    linflow("evaluate", "digits")
"""


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo, check=True, capture_output=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def learner_repo(tmp_path_factory):
    """A repo laid out like this one (params, dvc.yaml, DVC config and plots template)
    after two digits experiments; (repo, MLflow tracking URI)."""
    repo = tmp_path_factory.mktemp("browser") / "repo"
    repo.mkdir()
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, repo / name)
    (repo / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "committed params")
    uri = f"sqlite:///{repo / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    res = subprocess.run(
        [sys.executable, "-c", TRAIN_TWICE, *LRS],
        cwd=repo, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return repo, uri


@pytest.fixture(scope="module")
def mlflow_ui(learner_repo):
    """`mlflow ui` as `make ui` runs it, over the learner's store; its base URL."""
    repo, uri = learner_repo
    port = free_port()
    log = (repo / "mlflow-ui.log").open("w")
    proc = subprocess.Popen(
        [
            str(MLFLOW), "ui", "--backend-store-uri", uri,
            "--default-artifact-root", str(repo / "mlartifacts"),
            "--host", "127.0.0.1", "--port", str(port),
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, repo / "mlflow-ui.log", WAIT_S, "mlflow ui")
    except AssertionError:
        proc.kill()
        raise
    yield url
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def browser():
    chromium, chromedriver = _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1600,1000",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(chromedriver))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def artifacts():
    """test-artifacts/mlflow-ui/, emptied, and said on the terminal."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS


def _say(capsys, line: str) -> None:
    with capsys.disabled():
        print(f"\n{line}")


def _runs(uri: str) -> dict:
    """{run name: (run id, test_accuracy, train.lr, linflow.changed, val_loss history)}."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("linflow-digits")
    out = {}
    for run in client.search_runs([exp.experiment_id]):
        curve = client.get_metric_history(run.info.run_id, "val_loss")
        out[run.info.run_name] = (
            run.info.run_id,
            run.data.metrics["test_accuracy"],
            run.data.params["train.lr"],
            run.data.tags.get("linflow.changed"),
            [m.value for m in sorted(curve, key=lambda m: m.step)],
        )
    return out


def _make_ui_links(port: int, db: Path) -> tuple[str, dict]:
    """What `make ui` prints for this store and port: (experiment list, {experiment: runs view})."""
    res = subprocess.run(
        ["make", "-s", "--no-print-directory", "-C", str(ROOT), "ui-links",
         f"PY={sys.executable}", f"UI_PORT={port}", f"UI_DB={db}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    listing = re.search(r"MLflow UI: (http://\S+)", res.stdout)
    links = dict(re.findall(r"^  (linflow-\S+): (http://\S+)$", res.stdout, re.M))
    assert listing and links, res.stdout
    return listing.group(1), links


def _wait(driver, until, what: str):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        # The UI re-renders as data arrives: an element read a moment ago may be gone.
        return WebDriverWait(
            driver, WAIT_S, poll_frequency=0.3, ignored_exceptions=[StaleElementReferenceException]
        ).until(until)
    except Exception as exc:
        driver.save_screenshot(str(ARTIFACTS / "failed.png"))
        raise AssertionError(f"{what} (screenshot failed.png)") from exc


def _text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def _close_assistant(driver) -> None:
    """MLflow 3.17 opens an assistant panel over a third of the page: close it."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(
        By.CSS_SELECTOR, '[data-component-id="mlflow.assistant.chat_panel.close"]'
    ):
        button.click()


def _show_columns(driver, names) -> None:
    """Tick columns in the runs table's Columns menu, as a user does."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.find_element(By.XPATH, "//button[normalize-space()='Columns']").click()
    search = _wait(
        driver,
        lambda d: d.find_element(By.CSS_SELECTOR, 'input[placeholder="Search columns"]'),
        "the Columns menu has a search box",
    )
    for name in names:
        search.send_keys(Keys.CONTROL, "a")  # (modifiers are released after each call)
        search.send_keys(Keys.DELETE)
        search.send_keys(name)
        item = _wait(
            driver,
            lambda d, n=name: d.find_element(By.XPATH, f"//strong[normalize-space()='{n}']"),
            f"the Columns menu offers {name}",
        )
        item.click()
    search.send_keys(Keys.ESCAPE)


def _table(driver) -> dict:
    """The runs table as {run name: {column id: text}} (ag-grid keeps the pinned
    name column and the others in separate row containers, by row index)."""
    rows: dict[str, dict] = {}
    cells = driver.execute_script(
        """return [...document.querySelectorAll('.ag-row')].map(r => [r.getAttribute('row-index'),
             [...r.querySelectorAll('.ag-cell')].map(c => [c.getAttribute('col-id'), (c.querySelector('a') || c).textContent])]);"""
    )
    for index, row in cells:
        rows.setdefault(index, {}).update(dict(row))
    return {
        r["attributes.`Run Name`"].strip(): r for r in rows.values() if "attributes.`Run Name`" in r
    }


def _compare_metric(driver, name: str) -> list[str]:
    """One metric's values in the compare view's metrics grid, in its run order."""
    return driver.execute_script(
        """const a = [...document.querySelectorAll('a[title="Plot chart"]')]
             .find(a => a.textContent.trim() === arguments[0]);
           if (!a) return null;
           const top = a.parentElement.style.top;
           let box = a; while (box && box.querySelectorAll('.ReactVirtualized__Grid').length < 2) box = box.parentElement;
           return [...box.querySelectorAll('.ReactVirtualized__Grid__innerScrollContainer > div')]
             .filter(c => c.style.top === top && !c.contains(a))
             .sort((x, y) => parseFloat(x.style.left) - parseFloat(y.style.left))
             .map(c => c.textContent.trim());""",
        name,
    )


def _compare_row(driver, name: str) -> list[str]:
    from selenium.webdriver.common.by import By

    row = driver.find_element(By.XPATH, f"//tr[th[normalize-space()='{name}']]")
    return [td.get_attribute("textContent").strip() for td in row.find_elements(By.TAG_NAME, "td")]


def test_mlflow_ui_shows_both_experiments_and_overlays_val_loss(
    browser, learner_repo, mlflow_ui, artifacts, capsys
):
    from selenium.webdriver.common.by import By

    _say(capsys, f"browser test screenshots: {artifacts}")
    runs = _runs(learner_repo[1])
    names = {f"digits lr={lr}" for lr in LRS}
    assert set(runs) == names, f"run names: {sorted(runs)}"
    for name, (_, _, lr, changed, _) in runs.items():
        assert (lr, changed) == (name.split("=")[1], f"train.lr={lr}")

    # The addresses make ui prints: the experiment list, and each experiment's runs view.
    listing, links = _make_ui_links(int(mlflow_ui.rsplit(":", 1)[1]), learner_repo[0] / "mlflow.db")
    browser.get(listing)
    _wait(
        browser,
        lambda d: d.find_element(By.LINK_TEXT, "linflow-digits"),
        "the experiment list shows linflow-digits",
    )
    browser.get(links["linflow-digits"])
    _wait(browser, lambda d: names <= set(_table(d)), f"the runs table lists {sorted(names)}")
    _close_assistant(browser)
    _show_columns(browser, ["test_accuracy", "train.lr"])
    _wait(
        browser,
        lambda d: all("metrics.`test_accuracy`" in r for r in _table(d).values()),
        "the runs table shows test_accuracy",
    )
    table = _table(browser)
    for name in names:
        _, accuracy, lr, _, _ = runs[name]
        row = table[name]
        assert float(row["metrics.`test_accuracy`"]) == pytest.approx(accuracy, abs=1e-12), row
        assert row["params.`train.lr`"].strip() == lr, row
    browser.save_screenshot(str(artifacts / "1-runs.png"))

    # Tick both runs, press Compare.
    for box in browser.find_elements(By.CSS_SELECTOR, ".ag-row .ag-selection-checkbox"):
        box.click()
    browser.find_element(By.CSS_SELECTOR, '[data-testid="runs-compare-button"]').click()
    _wait(
        browser,
        lambda d: "compare-runs" in d.current_url and _compare_metric(d, "test_accuracy"),
        "the compare view shows test_accuracy",
    )
    order = _compare_row(browser, "Run Name:")
    assert set(order) == names, order
    assert _compare_row(browser, "train.lr") == [runs[n][2] for n in order]
    assert _compare_row(browser, "linflow.changed") == [runs[n][3] for n in order]
    shown = _compare_metric(browser, "test_accuracy")
    assert [float(v) for v in shown] == pytest.approx([runs[n][1] for n in order], abs=5e-4)
    # "Show diff only" everywhere: what the two experiments changed, on one screen.
    switched = browser.execute_script(
        """const labels = [...document.querySelectorAll('*')].filter(e =>
             e.childElementCount === 0 && e.textContent.trim() === 'Show diff only');
           let n = 0;
           for (const label of labels) {
             let box = label.parentElement;
             while (box && !box.querySelector('[role=switch]')) box = box.parentElement;
             if (box) { box.querySelector('[role=switch]').click(); n++; }
           }
           return n;"""
    )
    assert switched >= 2, f"{switched} 'Show diff only' switches (params, metrics, tags)"
    _wait(
        browser,
        lambda d: not d.find_elements(By.XPATH, "//tr[th[normalize-space()='train.epochs']]"),
        "diff only hides the params both runs share",
    )
    assert _compare_row(browser, "train.lr") == [runs[n][2] for n in order]
    browser.set_window_size(1600, 1900)
    browser.execute_script("window.scrollTo(0, 0)")
    _wait(
        browser,
        lambda d: d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot"),
        "the compare view draws its parallel-coordinates chart",
    )
    browser.save_screenshot(str(artifacts / "2-compare.png"))
    browser.set_window_size(1600, 1000)

    # val_loss, both curves on one chart: the points each run logged.
    link = browser.find_element(By.CSS_SELECTOR, "a[href*='metric=%22val_loss%22']")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", link)
    link.click()
    _wait(
        browser,
        lambda d: d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .scatterlayer .trace"),
        "the val_loss chart is drawn",
    )
    traces = browser.execute_script(
        "return document.querySelector('.js-plotly-plot').data.map(t => [t.name, Array.from(t.y)]);"
    )
    curves = {name: y for name, y in traces}
    assert set(curves) == names, sorted(curves)
    for name in names:
        assert curves[name] == pytest.approx(runs[name][4], rel=1e-9), name
    assert len(curves[next(iter(names))]) == 200  # train.classification.epochs
    assert "val_loss" in _text(browser)
    browser.save_screenshot(str(artifacts / "3-val_loss.png"))


def test_models_page_lists_the_registered_model_its_aliases_and_signature(
    browser, learner_repo, mlflow_ui, artifacts
):
    """Each training registered a version of linflow-digits; a user promotes one as
    docs/mlflow.md says (an alias); the UI lists them, and a version its signature."""
    from mlflow import MlflowClient
    from selenium.webdriver.common.by import By

    client = MlflowClient(tracking_uri=learner_repo[1])
    versions = client.search_model_versions("name = 'linflow-digits'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert not client.get_registered_model("linflow-digits").aliases  # no gate ran
    client.set_registered_model_alias("linflow-digits", "challenger", "2")
    aliases = client.get_registered_model("linflow-digits").aliases
    browser.get(f"{mlflow_ui}/#/models")
    _wait(browser, lambda d: "linflow-digits" in _text(d), "the Models page lists linflow-digits")
    _dismiss_dialogs(browser)  # MLflow 3's "new Model Registry UI" announcement

    def row(d):
        rows = d.find_elements(By.XPATH, "//*[@role='row' or self::tr][.//a[.='linflow-digits']]")
        return rows[0].text if rows else ""

    _wait(
        browser,
        lambda d: "@ challenger\n: Version 2" in row(d),
        "the model's row shows its alias (@ challenger : Version 2)",
    )
    browser.save_screenshot(str(artifacts / "4-models.png"))
    link = browser.find_element(
        By.XPATH, "//a[.='linflow-digits' and contains(@href, '#/models/')]"
    )
    browser.get(link.get_attribute("href"))
    _dismiss_dialogs(browser)
    _wait(
        browser,
        lambda d: "Version 2" in _text(d) and "Version 1" in _text(d),
        "the model page lists versions 1 and 2",
    )
    browser.save_screenshot(str(artifacts / "5-model-versions.png"))
    browser.get(f"{mlflow_ui}/#/models/linflow-digits/versions/{aliases['challenger']}")
    _dismiss_dialogs(browser)
    _wait(browser, lambda d: "Schema" in _text(d), "the version page shows its schema")
    browser.save_screenshot(str(artifacts / "6-model-version.png"))
    text = _text(browser)
    # The signature: 64 pixel columns in; the class and 10 probabilities out.
    assert "challenger" in text and "Inputs (64)" in text and "Outputs (11)" in text, text


def _dismiss_dialogs(driver) -> None:
    """Close the announcement dialogs the MLflow UI opens over a page, if any (a script
    click: the dialog may still be animating in, when a real click is refused)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    def shown(d):
        return [g for g in d.find_elements(By.CSS_SELECTOR, "[role='dialog']") if g.is_displayed()]

    for _ in range(3):
        try:
            dialogs = shown(driver)
            if not dialogs:
                return
            buttons = dialogs[0].find_elements(By.CSS_SELECTOR, "button[aria-label='Close']")
            if not buttons:
                return
            driver.execute_script("arguments[0].click();", buttons[0])
        except StaleElementReferenceException:
            pass  # re-rendered meanwhile: look again
        time.sleep(0.5)
    _wait(driver, lambda d: not shown(d), "the UI's dialogs close")


def test_dvc_plots_page_renders_offline(browser, learner_repo, artifacts):
    """`dvc plots show` over the learner's outputs, opened with the network off."""
    repo, _ = learner_repo
    res = subprocess.run([str(DVC), "plots", "show"], cwd=repo, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    page = repo / "dvc_plots" / "index.html"
    html = page.read_text()
    assert not re.search(r"""<script[^>]+src=["']?https?:""", html), (
        "a script loads from the network"
    )
    charts = re.findall(r"vegaEmbed\('#([^']+)'", html)
    # This repo has digits' outputs only: its validation loss per epoch and its test
    # confusion matrix (evaluate's predictions.csv, drawn by the classification
    # template) have data (the other datasets' charts are empty frames).
    drawn = ["reports_digits_history_csv", "reports_digits_predictions_csv"]
    assert set(drawn) <= set(charts), charts

    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    try:
        browser.get_log("browser")  # drop earlier pages' messages
        browser.get(page.as_uri())
        # Each chart: a canvas vega-embed drew, with ink on it (pixels darker than white).
        ink = """return arguments[0].map(id => {
            const c = document.querySelector('#' + CSS.escape(id) + ' canvas');
            if (!c || !c.width) return 0;
            const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 0; i < px.length; i += 4) if (px[i + 3] > 0 && Math.min(px[i], px[i + 1], px[i + 2]) < 200) n++;
            return n;
        });"""
        _wait(
            browser,
            lambda d: all(n > 500 for n in d.execute_script(ink, drawn)),
            f"digits' Vega charts drew offline: {drawn}",
        )
        embedded = browser.execute_script(
            "return arguments[0].filter(id => document.getElementById(id).classList.contains('vega-embed'));",
            charts,
        )
        assert embedded == charts, "vega-embed did not run for every chart"
    finally:
        browser.execute_cdp_cmd(
            "Network.emulateNetworkConditions",
            {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
        )
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    browser.save_screenshot(str(artifacts / "4-dvc-plots.png"))
