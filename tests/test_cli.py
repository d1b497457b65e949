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
