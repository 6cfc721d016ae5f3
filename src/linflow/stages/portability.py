"""portability: run verify as other CPUs would, on this one; print the spreads.

Not a DVC stage. Each variant (:data:`linflow.verify.portability.VARIANTS`)
switches the kernels torch, MKL and numpy pick, re-runs the pipeline in its own
copy of the working tree and judges it against the committed results; then every
checked number's largest move is printed against its tolerance.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("linflow")


def add_arguments(p) -> None:
    from linflow.verify.portability import VARIANTS

    p.add_argument(
        "variants",
        nargs="*",
        metavar="VARIANT",
        help=f"variants to run (default: all): {', '.join(VARIANTS)}",
    )


def run(args, params) -> int:
    from linflow.core.errors import ConfigError
    from linflow.verify.portability import VARIANTS, run_portability

    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    text, ok = run_portability(Path.cwd(), list(args.variants) or list(VARIANTS), log)
    print(text)
    return 0 if ok else 1
