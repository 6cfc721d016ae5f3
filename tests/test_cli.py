"""The `linflow` command line: the registry, help, version, choices, the error boundary."""

import subprocess
import sys
from pathlib import Path

import pytest

from linflow import stages
from linflow.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


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


def test_the_shell_loads_only_the_chosen_stage():
    """cli.py and the registry compute nothing and load one stage module: that is why
    dvc.yaml does not list them as dependencies of the stages."""
    code = (
        "import sys\n"
        "from linflow.cli import build_parser\n"
        "build_parser(['report', 'line'])\n"
        "print(sorted(m for m in sys.modules if m.startswith('linflow')))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert (
        res.stdout.strip()
        == "['linflow', 'linflow.cli', 'linflow.stages', 'linflow.stages.report']"
    )


def test_every_registered_command_has_a_module_and_a_described_subcommand():
    res = subprocess.run(
        [sys.executable, "-m", "linflow", "--help"], capture_output=True, text=True
    )
    assert res.returncode == 0
    for name in (*stages.PIPELINE, *stages.COMMANDS):
        module = stages.load(name)
        assert callable(module.add_arguments) and callable(module.run)
        assert module.__doc__ and name in res.stdout
        assert stages.DESCRIPTIONS[name].split()[0] in res.stdout


def test_the_pipeline_stages_are_the_stages_of_dvc_yaml():
    import yaml

    declared = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert tuple(declared) == stages.PIPELINE


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("linflow ")


def test_dataset_choices_come_from_params_and_paths_have_defaults(tmp_path, base_params):
    import yaml

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(base_params))
    p = build_parser(["--params", str(params), "train", "line"])
    args = p.parse_args(["--params", str(params), "train", "line"])
    assert (args.data, args.model, args.reports) == (None, None, None)  # run() fills them
    with pytest.raises(SystemExit):
        p.parse_args(["--params", str(params), "train", "nope"])
    text = build_parser(["--params", str(params), "train"]).format_help()
    assert "train" in text


def test_a_user_error_is_one_line_and_exit_1(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: -1\n")
    assert main(["--params", str(bad), "prepare", "line", "--out", str(tmp_path / "x.npz")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("linflow prepare: error: ")
