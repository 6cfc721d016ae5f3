"""One real `dvc repro` per test session, shared read-only by every whole-pipeline test.

Tests that change a repo work in their own copy (`clone_reproduced`, ~1 s) so
they never see each other's edits and the ~1.5 minute run happens once.
"""

from __future__ import annotations

import pytest

from .helpers import copy_repo, pipeline_env, run


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory):
    """(repo path, committed dvc.lock text, result of `dvc repro`) after one fresh-clone run.

    Never modify it: copy it with `clone_reproduced` first.
    """
    dest = copy_repo(tmp_path_factory.mktemp("reproduced"))
    committed_lock = (dest / "dvc.lock").read_text()
    res = run(["dvc", "repro"], dest, pipeline_env())
    # On another CPU than the one that made the committed results, weights, metrics and
    # the lock's output hashes differ in their last bits (docs/reproducibility.md):
    # commit what this machine made, so the tests below judge bit-identity against a
    # run on this machine, where it is promised. test_pipeline checks the committed
    # results against this run with the gate's tolerances.
    run(["git", "add", "-A"], dest, pipeline_env())
    run(
        ["git", "commit", "-qm", "reproduced on this machine", "--allow-empty"],
        dest,
        pipeline_env(),
    )
    return dest, committed_lock, res
