"""The root CLI: every command is listed, and errors become exit codes."""

from typer.testing import CliRunner

from mlflowctl.cli.main import app


def test_help_lists_commands():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("up", "down", "status", "logs", "trigger", "backfill", "dags", "health"):
        assert command in result.output
