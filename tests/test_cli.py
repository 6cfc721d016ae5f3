import subprocess
import sys


def test_help_imports_no_heavy_library():
    code = (
        "import sys, contextlib, io\n"
        "from linflow.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])\n"
        "print(sorted(m for m in ('torch', 'sklearn', 'mlflow', 'matplotlib') if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


def test_every_stage_has_a_subcommand():
    res = subprocess.run(
        [sys.executable, "-m", "linflow", "--help"], capture_output=True, text=True
    )
    assert res.returncode == 0
    for stage in ("prepare", "split", "train", "evaluate", "report"):
        assert stage in res.stdout
