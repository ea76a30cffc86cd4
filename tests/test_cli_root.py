"""The root CLI: every command is listed, and errors become exit codes."""

import os
import subprocess

import pytest
from typer.testing import CliRunner

from conftest import MLWF
from mlflowctl.cli.main import app


def test_help_lists_commands():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("up", "down", "status", "logs", "trigger", "backfill", "dags", "health"):
        assert command in result.output


def _mlwf(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "_MLWF_COMPLETE"}
    return subprocess.run([MLWF, *args], capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("argv", [["trigger", "--help"], ["models", "promote", "--help"], ["--version", "status"]])
def test_a_command_built_alone_reads_as_in_the_whole_app(argv):
    """`main` builds only the command it runs: its help and options must be the whole app's."""
    alone = _mlwf(*argv)
    whole = CliRunner().invoke(app, argv, prog_name="mlwf")
    assert alone.returncode == whole.exit_code == 0, alone.stderr
    assert alone.stdout.split() == whole.output.split()  # the same words; the wrapping follows the terminal


def test_an_unknown_command_is_looked_up_among_all():
    """A misspelt name gets click's suggestion, which needs every command built."""
    result = _mlwf("statuz")
    assert result.returncode == 2
    assert "Did you mean 'status'" in result.stderr
