"""core.lockfile: DVC's folder hash, and 'would dvc repro skip this stage?' from dvc.lock alone.

Judged against DVC itself: the hash against dvc_data's, the verdict against a
real `dvc repro` / `dvc status` in a tiny repository.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from linflow.core.lockfile import dir_md5, path_md5, stage_current

DVC = str(Path(sys.executable).parent / "dvc")


def test_folder_hash_is_dvcs(tmp_path):
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    (tmp_path / "m" / "sub").mkdir(parents=True)
    (tmp_path / "m" / "b.bin").write_bytes(bytes(range(256)) * 3)
    (tmp_path / "m" / "a.json").write_text('{"x": 1}\n')
    (tmp_path / "m" / "sub" / "c.txt").write_text("line\r\n")  # no dos2unix in DVC 3
    fs = LocalFileSystem()
    *_, tree = build(HashFileDB(fs, str(tmp_path / "odb")), str(tmp_path / "m"), fs, "md5")
    assert dir_md5(tmp_path / "m") == tree.hash_info.value
    assert path_md5(tmp_path / "m") == tree.hash_info.value
    assert path_md5(tmp_path / "nothing") is None


def _dvc(repo: Path, *args: str) -> str:
    res = subprocess.run([DVC, *args], cwd=repo, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.fixture
def repo(tmp_path) -> Path:
    """A DVC repo with one stage: a folder and a param in, a file out."""
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "x.txt").write_text("1\n")
    (tmp_path / "params.yaml").write_text("scale: {k: 2}\nother: 5\n")
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "double": {
                        "cmd": "cat inputs/x.txt inputs/x.txt > out.txt",
                        "deps": ["inputs"],
                        "params": ["scale.k"],
                        "outs": [{"out.txt": {"cache": False}}],
                    }
                }
            }
        )
    )
    _dvc(tmp_path, "init", "--no-scm", "-q")
    _dvc(tmp_path, "repro", "-q")
    return tmp_path


def test_current_exactly_when_dvc_would_skip_the_stage(repo):
    lock = repo / "dvc.lock"
    assert "up to date" in _dvc(repo, "status")
    assert stage_current(lock, "double")
    assert stage_current(lock, "double", needs=[repo / "inputs"])
    assert not stage_current(lock, "double", needs=[repo / "elsewhere"])  # not what it read
    assert not stage_current(lock, "missing")
    (repo / "params.yaml").write_text("scale: {k: 2}\nother: 6\n")  # a param it does not use
    assert stage_current(lock, "double") and "up to date" in _dvc(repo, "status")

    (repo / "params.yaml").write_text("scale: {k: 3}\nother: 6\n")
    assert "changed" in _dvc(repo, "status") and not stage_current(lock, "double")
    (repo / "params.yaml").write_text("scale: {k: 2}\nother: 6\n")
    (repo / "inputs" / "y.txt").write_text("new file in a folder dependency\n")
    assert "changed" in _dvc(repo, "status") and not stage_current(lock, "double")
    (repo / "inputs" / "y.txt").unlink()
    assert stage_current(lock, "double")
    (repo / "out.txt").write_text("edited output\n")
    assert "changed" in _dvc(repo, "status") and not stage_current(lock, "double")
    (repo / "out.txt").unlink()
    assert not stage_current(lock, "double")


def test_an_unreadable_lock_is_never_current(tmp_path):
    lock = tmp_path / "dvc.lock"
    assert not stage_current(lock, "double")  # no lock at all: not a DVC run
    lock.write_text("stages: [not, a, mapping")
    assert not stage_current(lock, "double")
    lock.write_text("stages:\n  double:\n    deps:\n    - path: x\n")  # no md5 recorded
    assert not stage_current(lock, "double")
