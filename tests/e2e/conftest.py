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
    return dest, committed_lock, res
