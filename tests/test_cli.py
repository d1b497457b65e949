import subprocess
import sys

from segfungi import __version__
from segfungi.cli import main


def test_version_and_help(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert __version__ in capsys.readouterr().out
    assert main([]) == 0
    out = capsys.readouterr().out
    for command in ["build-bank", "eval", "sweep", "demo", "demo-data", "fewshot", "predict", "bank", "classify"]:
        assert command in out


def test_console_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "segfungi", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "build-bank" in result.stdout


def test_user_error_is_one_line_not_traceback(capsys, tmp_path):
    code = main(["eval", "--bank", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and "missing" in err


# ------------------------------------------------ issue 22, item 9: start-up cost
# A fresh interpreter: the CLI module, its parser and `--help` must not import torch
# (it took 2 s and 650 MB before the parser ran); neither may `bank info`.
_NO_TORCH = """
import contextlib, io, sys
from segfungi.cli import build_parser, main
build_parser()
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(["--help"])
    except SystemExit:
        pass
    for argv in sys.argv[1:]:
        assert main(argv.split("|")) == 0, argv
print(sorted(m for m in ("torch", "timm", "torchvision") if m in sys.modules))
"""


def test_cli_help_and_bank_info_do_not_import_torch(fungi_bank):
    result = subprocess.run([sys.executable, "-c", _NO_TORCH, f"bank|info|{fungi_bank}",
                             f"bank|info|--json|{fungi_bank}", f"bank|verify|--sizes-only|{fungi_bank}"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
