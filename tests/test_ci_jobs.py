"""The CI jobs in README "Use in CI", read from the README and run on this machine.

Both jobs (GitHub Actions and GitLab CI) must run the same `mlwf` commands in the same order;
those commands then run in a copy of the project with its own state directory and free ports
(conftest's Stack), each bounded, `mlwf down` always last, as the jobs' `always()` /
`after_script` do. The set-up lines (apt, scripts/setup.sh, PATH) are this machine's already.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import xml.etree.ElementTree as ET

import pytest
import yaml

from conftest import MLWF, REPO, Stack

EXPECTED = [
    ["parse", "--junit", "reports/parse.xml"],
    ["test", "ml_pipeline_dag", "--junit", "reports/test.xml"],
    ["up", "--timeout", "300"],
    ["trigger", "ml_pipeline_dag", "--unpause", "--junit", "reports/run.xml"],
    ["health", "--fail-on", "warning"],
    ["down"],
]
BOUND_S = {"parse": 120, "test": 900, "up": 360, "trigger": 900, "health": 120, "down": 120}


def ci_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("## Use in CI")
    return text[start : text.index("\n## ", start + 1)]


def jobs() -> dict[str, dict]:
    """The README's YAML blocks of that section, by the job's CI system."""
    found = {}
    for block in re.findall(r"```yaml\n(.*?)```", ci_section(), re.S):
        data = yaml.safe_load(block)
        found["github" if "jobs" in data else "gitlab"] = data
    return found


def mlwf_commands(lines: list[str]) -> list[list[str]]:
    """The mlwf invocations among a job's shell lines, as argument lists (the program dropped)."""
    commands = []
    for line in lines:
        words = shlex.split(line)
        if words and (words[0] == "mlwf" or words[0].endswith("/mlwf")):
            commands.append(words[1:])
    return commands


def github_lines(job: dict) -> list[str]:
    return [step["run"] for step in job["jobs"]["dags"]["steps"] if "run" in step]


def gitlab_lines(job: dict) -> list[str]:
    return job["dags"]["script"] + job["dags"]["after_script"]


def test_both_jobs_run_the_documented_commands_in_order():
    found = jobs()
    assert sorted(found) == ["github", "gitlab"]
    assert mlwf_commands(github_lines(found["github"])) == EXPECTED
    assert mlwf_commands(gitlab_lines(found["gitlab"])) == EXPECTED
    # down runs whatever failed before it
    steps = found["github"]["jobs"]["dags"]["steps"]
    assert next(s for s in steps if s.get("run") == "mlwf down").get("if") == "always()"
    assert found["gitlab"]["dags"]["after_script"] == [".venv/bin/mlwf down"]


@pytest.mark.stack
@pytest.mark.slow
def test_the_documented_job_runs_green_here(tmp_path):
    commands = mlwf_commands(github_lines(jobs()["github"]))
    stack = Stack.create(tmp_path)
    done = []
    try:
        for args in commands[:-1]:
            result = subprocess.run(
                [MLWF, *args], cwd=stack.project, env=stack.env, capture_output=True, text=True,
                timeout=BOUND_S[args[0]],
            )
            assert result.returncode == 0, f"mlwf {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}"
            done.append(args[0])
    finally:
        down = stack.mlwf(*commands[-1], timeout=BOUND_S["down"])
    assert done == ["parse", "test", "up", "trigger", "health"]
    assert down.returncode == 0, down.stderr
    reports = {name: ET.parse(stack.project / "reports" / f"{name}.xml").getroot() for name in ("parse", "test", "run")}
    assert reports["parse"].get("tests") == "2" and reports["parse"].get("failures") == "0"
    for name in ("test", "run"):
        assert reports[name].get("tests") == "8" and reports[name].get("failures") == "0"
