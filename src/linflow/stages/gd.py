"""gd: gradient descent on plain functions -- the step-size lesson, with no data.

Minimises each function of params ``gd.functions`` (2x² and x²+y²+z²) from
x_0 = (start, ...) for ``gd.steps`` steps at each lr of ``gd.lrs``, twice: with
the gradient written out in numpy and with torch autograd (they must agree).
Writes ``reports/gd/trajectories.csv`` (every step), ``reports/gd/gd.json``
(per function: λ_max, the bound 2/λ_max, and per lr where it ended and whether
it converged) and ``reports/gd/gd.png`` (f(x_k) against k, log scale, one panel
per function); logs one MLflow run in experiment ``linflow-gd``.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("linflow")


def add_arguments(p) -> None:
    p.add_argument("--out", default="reports/gd", help="folder to write (default: %(default)s)")


def _metric_name(fn: str, lr: float) -> str:
    """MLflow-safe: '2x^2' at 0.45 -> 'f_2x2.lr_0.45'."""
    return f"f_{fn.replace('^', '').replace('+', '')}.lr_{lr:g}"


def run(args, params) -> None:
    import numpy as np

    from linflow import gd
    from linflow.core import tracking
    from linflow.core.plots import _margins, _plt, _save
    from linflow.core.storage import write_csv, write_json

    cfg = params.gd
    out = Path(args.out)
    rows, summary, curves = [], {}, {}
    dim = max(len(gd.FUNCTIONS[n].coef) for n in cfg.functions)
    for name in cfg.functions:
        f = gd.FUNCTIONS[name]
        start = np.full(len(f.coef), cfg.start)
        entry = {"lambda_max": f.lambda_max, "lr_bound": f.lr_bound, "runs": {}}
        for lr in cfg.lrs:
            path = gd.descend_numpy(f, start, lr, cfg.steps)  # (steps + 1, dim)
            auto, values = gd.descend_torch(gd.torch_function(f), start, lr, cfg.steps)
            gap = float(np.max(np.abs(path - auto) / np.maximum(1.0, np.abs(path))))
            for k, x in enumerate(path):
                coords = [f"{v:.10g}" for v in x] + [""] * (dim - x.size)
                rows.append([name, lr, k, *coords, f"{f.value(x):.10g}"])
            factor = abs(1.0 - lr * f.lambda_max)  # per step, along the top eigenvector
            entry["runs"][f"{lr:g}"] = {
                "final_value": f.value(path[-1]),
                "contraction_per_step": factor,
                "converges": factor < 1.0,
                "numpy_vs_autograd_max_rel_diff": gap,
            }
            curves[(name, lr)] = values
            log.info(
                "gd %s: lr %g (bound 2/lambda_max = %g): f(x_%d) = %.4g, %s",
                name, lr, f.lr_bound, cfg.steps, f.value(path[-1]),
                "converges" if factor < 1 else "DIVERGES (lr above the bound)",
            )  # fmt: skip
        summary[name] = entry
    header = ["function", "lr", "step", *(f"x{i + 1}" for i in range(dim)), "value"]
    write_csv(out / "trajectories.csv", header, rows)
    write_json(out / "gd.json", {"steps": cfg.steps, "start": cfg.start, "functions": summary})

    plt = _plt()
    fig, axes = plt.subplots(1, len(cfg.functions), figsize=(5 * len(cfg.functions), 3.6))
    for ax, name in zip(np.atleast_1d(axes), cfg.functions, strict=True):
        f = gd.FUNCTIONS[name]
        for lr in cfg.lrs:
            style = "-" if abs(1 - lr * f.lambda_max) < 1 else "--"
            ax.semilogy(np.maximum(curves[(name, lr)], 1e-20), style, label=f"lr {lr:g}")
        ax.set_title(f"f = {name}: diverges above lr 2/λmax = {f.lr_bound:g}", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("f(x)")
        ax.legend(fontsize=7)
    _margins(fig)
    _save(fig, out / "gd.png")

    run_params = {"functions": ",".join(cfg.functions), "lrs": ",".join(map(str, cfg.lrs))}
    run_params |= {"steps": cfg.steps, "start": cfg.start}
    tags = {tracking.KIND_TAG: "gd", "linflow.dataset": "gd"}
    with tracking.TrainingRun("gd", "gd", run_params, tags) as run:
        for (name, lr), values in curves.items():
            for k, v in enumerate(values):
                run.log_epoch({"epoch": k, _metric_name(name, lr): float(min(v, 1e300))})
        run.log_artifacts([out / "gd.json", out / "gd.png", out / "trajectories.csv"])
