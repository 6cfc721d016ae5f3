"""Training in several processes: ``linflow train`` starts torchrun, ranks join it.

``datasets.<ds>.train.processes: N`` (N > 1) makes the train stage run itself as N
ranks under ``torchrun --standalone`` (one machine; docs/streaming.md shows the same
command across machines). Rank 0 writes every output and logs the one MLflow run;
the others train in step. The launcher forwards the ranks' log lines, and when a
rank fails it ends with one line naming the rank and its own error (or the signal
that killed it); torchrun then stops the other ranks, so no output is written and
the MLflow run ends KILLED (a rank that was SIGKILLed is closed by close_dead_runs).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys

from linflow.core.errors import DistributedError

log = logging.getLogger("linflow")

_ERROR = re.compile(r"^linflow \S+\[rank (\d+)\]: error: (.*)$")
_ROOT_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)")
_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")


def rank_tag() -> str:
    """'[rank R]' inside a torchrun of several ranks, else ''."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ:
        return f"[rank {os.environ['RANK']}]"
    return ""


def command(args, processes: int) -> list[str]:
    """The torchrun command line that runs this train stage as `processes` ranks."""
    argv = ["--params", getattr(args, "params", "params.yaml"), "train", args.dataset]
    for opt in ("data", "model", "reports"):
        if getattr(args, opt, None):
            argv += [f"--{opt}", getattr(args, opt)]
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={processes}", "--max-restarts=0", "--monitor-interval=0.2",
        "-m", "linflow", *argv,
    ]  # fmt: skip


def launch(args, processes: int, timeout_s: float) -> None:
    """Run the ranks; raise DistributedError naming the first rank that failed."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env.pop("DVC_STAGE", None)  # the ranks are not DVC's children: no parent-death watch
    cmd = command(args, processes)
    log.info("train %s: %d processes under torchrun (gloo)", args.dataset, processes)
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, bufsize=1)
    errors: list[tuple[int, str]] = []
    other: list[str] = []
    try:
        for line in proc.stderr:
            line = line.rstrip("\n")
            if m := _ERROR.match(line):
                errors.append((int(m.group(1)), m.group(2)))
            if line.startswith("linflow"):
                print(line, file=sys.stderr, flush=True)
            else:
                other.append(line)
        code = proc.wait()
    except BaseException:
        proc.send_signal(signal.SIGTERM)  # torchrun passes it on to every rank
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    if code == 0:
        return
    for line in other:
        log.debug("torchrun: %s", line)
    _close_dead_runs()
    rank, exit_code = _root_cause(other)  # torchrun's first observed failure
    said = dict(errors)  # rank -> its own error line
    if rank == "?" and errors:
        rank = str(errors[0][0])
    if rank.isdigit() and int(rank) in said:
        raise DistributedError(f"rank {rank} of {processes} failed: {said[int(rank)]}")
    others = "; ".join(f"rank {r}: {m}" for r, m in errors)
    raise DistributedError(
        f"rank {rank} of {processes} {_exit_words(exit_code)}; torchrun stopped the others "
        f"(exit {code}), nothing was written" + (f" ({others})" if others else "")
    )


def _root_cause(lines: list[str]) -> tuple[str, int | None]:
    """(rank, exit code) of the failure that started it, from torchrun's summary: not a
    rank that torchrun itself stopped (SIGTERM: exit 143 from linflow, -15 raw)."""
    found: list[tuple[str, int]] = []
    rank = None
    for line in lines:
        if m := _ROOT_RANK.match(line):
            rank = m.group(1)
        elif (m := _EXIT.match(line)) and rank is not None:
            found.append((rank, int(m.group(1))))
            rank = None
    for rank, code in found:
        if code not in (143, -signal.SIGTERM):
            return rank, code
    return found[0] if found else ("?", None)


def _exit_words(code: int | None) -> str:
    if code is None:
        return "failed"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _close_dead_runs() -> None:
    try:
        from linflow.core import tracking

        closed = tracking.close_dead_runs()
        if closed:
            log.info("train: marked KILLED the MLflow run(s) a killed rank left open: %s", ", ".join(closed))  # fmt: skip
    except Exception as exc:  # the store's trouble is not the training's
        log.debug("close_dead_runs: %s", exc)


def join(device: str, timeout_s: float) -> tuple[int, int]:
    """Inside torchrun: join the process group; (rank, world size)."""
    from linflow.training import distributed

    return distributed.start(device, timeout_s)
