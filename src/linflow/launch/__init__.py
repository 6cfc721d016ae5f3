"""The ``linflow`` command: a stage run by DVC goes to the warm worker (preload.py)
when one is ready, else runs here. Kept free of heavy imports: it starts every stage."""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    from linflow.launch import worker as preload

    if "DVC_STAGE" in os.environ:
        # kill -9 of dvc must not leave this stage (or its worker child) running on.
        preload.die_with_parent(os.getppid())

    if preload.wanted(argv):
        code = preload.run(argv)
        if code is not None:
            return code
    from linflow.cli import main as run_here

    return run_here(argv)


if __name__ == "__main__":
    sys.exit(main())
