"""``linflow <command> ...``: the command line of every DVC stage and of verify.

Thin on purpose: it builds the parser from the registry (:mod:`linflow.stages`),
sets up logging, loads params.yaml, runs the one chosen command and is the one
error boundary: a :class:`~linflow.core.errors.LinflowError` (bad params, bad
input, divergence, a gap over tolerance, an unreachable tracking server) prints
``linflow <command>: error: <one line>`` and exits 1; a traceback means a bug.
It computes nothing, so it is not a dependency of the stages in dvc.yaml (their
own modules are, with what those import).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from linflow import stages

log = logging.getLogger("linflow")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("linflow")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "unknown"


def _chosen(argv: list[str]) -> str | None:
    """The command name in argv (skipping options and --params' value), if any."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--params":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def _dataset_names(argv: list[str]) -> list[str] | None:
    """The datasets params.yaml names, to list as choices; None when unreadable."""
    path = argv[argv.index("--params") + 1] if "--params" in argv[:-1] else "params.yaml"
    try:
        import yaml

        with open(path) as fh:
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster
            names = list((yaml.load(fh, Loader=loader) or {}).get("datasets") or {})
    except Exception:  # a broken params.yaml is reported, with its key, when loaded
        return None
    return [str(n) for n in names] or None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with full arguments for the command named in argv (only its module loads)."""
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(
        prog="linflow",
        description="Linear and softmax regression in a reproducible DVC pipeline: one "
        "command per DVC stage, plus verify and portability.",
    )
    p.add_argument("--version", action="version", version=f"linflow {_version()}")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = _chosen(argv)
    for name in (*stages.PIPELINE, *stages.COMMANDS):
        text = stages.DESCRIPTIONS[name]
        s = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        if name == chosen:
            stages.load(name).add_arguments(s)
            choices = _dataset_names(argv)
            for action in s._actions:
                if action.dest == "dataset" and choices:
                    action.choices = choices
                    action.help = f"{action.help}: {', '.join(choices)}"
    return p


def _on_sigterm(signum, frame):
    """The first SIGTERM stops the stage like Ctrl-C; later ones are ignored, so they
    cannot cut short the close that marks its MLflow run KILLED. (A stage forked by the
    multi-threaded warm worker gets its parent-death signal once per exiting worker
    thread: seen as a second SIGTERM inside the close, leaving the run RUNNING.)"""
    from linflow.core.errors import Interrupted

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    from linflow.launch.torchrun import rank_tag

    tag = rank_tag()  # '[rank R]' in a torchrun of several ranks
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"linflow{tag} %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    if tag and os.environ.get("RANK") != "0":  # ranks > 0 say only what goes wrong
        logging.getLogger("linflow").setLevel(logging.WARNING)
    for noisy in ("alembic", "mlflow", "matplotlib", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _on_sigterm)
    from linflow.core.errors import Interrupted, LinflowError

    try:
        from linflow.core.config import load_params

        code = stages.load(args.command).run(args, load_params(args.params))
    except LinflowError as exc:
        print(f"linflow {args.command}{tag}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # Writes go through storage.atomic_path (WriteError above); anything else the
        # filesystem refuses (a read, a folder) is still the user's environment, not a bug.
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"linflow {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"linflow {args.command}: interrupted", file=sys.stderr)
        return 130
    except Interrupted:  # SIGTERM
        print(f"linflow {args.command}: interrupted", file=sys.stderr)
        return 143
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
