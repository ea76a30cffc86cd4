"""Start child.py in the Airflow runtime and turn what it reports into mlwf's data (no printing).

The child gets the environment a stack's processes get (`local_environment`: the project's
DAG folder, task modules and Airflow settings), except what would reach a running stack: its
own AIRFLOW_HOME, SQLite database, data root and task logs in a scratch folder, no StatsD, no
webhook, and not the stack's marker (so `mlwf down` of a stack in the same state directory
leaves it alone). Secrets are made for the one run and never written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from mlflowctl.errors import (
    DagFileError,
    MissingDependencyError,
    NotFoundError,
    RunFailedError,
    TimeoutExpired,
    UsageError,
)

if TYPE_CHECKING:
    from mlflowctl.backends.runtime import Runtime
    from mlflowctl.config import Config
    from mlflowctl.runs import RunSnapshot, TaskFailure

CHILD = Path(__file__).with_name("child.py")
#: A file whose import takes this share of `[core] dagbag_import_timeout` is flagged: a busier
#: dag-processor (or CI machine) may see it time out.
SLOW_SHARE = 0.5
SCRATCH = "dagcheck"  # in the state directory: the template database and each test run's folder
LOG_TAIL_LINES = 20
DAG_ID = re.compile(r"[\w.-]{1,250}")  # Airflow's rule for ids; it also keeps file names made from one in their folder


@dataclass(frozen=True)
class ImportProblem:
    kind: str  # import, duplicate (a DAG id another file has) or cycle
    line: int | None
    last: str  # the error's last line
    trace: str
    dag_id: str | None = None


@dataclass(frozen=True)
class ParsedFile:
    file: str  # relative to the DAG folder
    path: str
    seconds: float
    timeout: float  # Airflow's import timeout for this file
    dags: list[str]
    warnings: list[str]
    error: ImportProblem | None

    @property
    def slow(self) -> bool:
        return self.seconds >= SLOW_SHARE * self.timeout


@dataclass
class ParseReport:
    dags_folder: str
    files: list[ParsedFile]
    seconds: float

    @property
    def problems(self) -> list[ParsedFile]:
        return [f for f in self.files if f.error]

    @property
    def dag_ids(self) -> list[str]:
        return sorted(dag for f in self.files for dag in f.dags)


def _file(data: dict) -> ParsedFile:
    error = data.get("error")
    return ParsedFile(
        file=data["file"],
        path=data["path"],
        seconds=float(data["seconds"]),
        timeout=float(data["timeout"]),
        dags=list(data["dags"]),
        warnings=list(data["warnings"]),
        error=ImportProblem(
            error["kind"], error.get("line"), error["last"], error["trace"], error.get("dag_id")
        ) if error else None,
    )


def describe(problem: ParsedFile) -> str:
    """One line: where and what."""
    error = problem.error
    where = f"{problem.file}:{error.line}" if error.line else problem.file
    return f"{where}: {error.last}"


# -- the child's environment and process ----------------------------------------------------


def dags_folder(config: Config) -> Path:
    folder = Path(config.dags_dir)
    if not folder.is_dir():
        raise NotFoundError(
            f"no DAG folder at {folder}", hint="set dags_dir in mlwf.toml or [tool.mlwf] (see `mlwf config`)"
        )
    return folder


def child_env(config: Config, scratch: Path, database: Path) -> dict[str, str]:
    from mlflowctl.backends.local.environment import local_environment
    from mlflowctl.backends.processes import STACK_MARKER
    from mlflowctl.secrets import generate

    # The executor plays no part in-process; the local one needs no broker.
    env = local_environment(dataclasses.replace(config, executor="local"), generate(), database_url=f"sqlite:///{database}")
    for name in (STACK_MARKER, "MLWF_STATSD_HOST", "MLWF_STATSD_PORT", "MLWF_WEBHOOK_URL"):
        env.pop(name, None)
    env.update(
        {
            "AIRFLOW_HOME": str(scratch / "airflow"),
            "MLWF_DATA_ROOT": str(scratch / "data"),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(scratch / "logs"),
            "AIRFLOW__METRICS__STATSD_ON": "False",
            # With no StatsD, a metric's legacy name goes nowhere; looking it up reads Airflow's
            # metrics registry, a YAML file parsed in pure Python, once per copy of its metrics
            # module: ~0.06 s of every parse and ~0.15 s of every test run.
            "AIRFLOW__METRICS__LEGACY_NAMES_ON": "False",
        }
    )
    return env


def start_child(runtime: Runtime, mode: str, plan: dict, env: dict, cwd: Path) -> subprocess.Popen:
    from mlflowctl.backends.local.starting import LAUNCH_CODE  # runs a script by path, its folder not on sys.path
    from mlflowctl.backends.processes import PRIVATE_UMASK

    return subprocess.Popen(
        [runtime.python, "-c", LAUNCH_CODE, str(CHILD), mode, json.dumps(plan)],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        start_new_session=True,  # Ctrl-C reaches mlwf, which stops the child
        umask=PRIVATE_UMASK,  # the database, data and logs as private as a stack's
    )


def stop_child(process: subprocess.Popen) -> None:
    """The child and whatever its tasks started (its session)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, 9)
        except ProcessLookupError:
            pass
    process.wait()
    if process.stdout:
        process.stdout.close()


def _events(process: subprocess.Popen, until: float) -> Iterator[dict]:
    from mlflowctl.backends.processes import read_lines

    assert process.stdout is not None
    for line in read_lines(process.stdout, until):
        if line.strip():
            yield json.loads(line)


def _died(process: subprocess.Popen, log: Path, what: str) -> RunFailedError:
    from mlflowctl.backends.local.logs import tail_lines

    code = process.wait()
    tail = tail_lines(log, LOG_TAIL_LINES) if log.exists() else []
    return RunFailedError(f"{what} ended without a result (exit {code})", hint="\n".join(tail) or None)


# -- parse ----------------------------------------------------------------------------------


def parse(config: Config, runtime: Runtime, *, timeout: float = 600.0) -> ParseReport:
    """Import every DAG file of the project in a fresh interpreter; the report (never raises for
    what it finds: the caller decides)."""
    folder = dags_folder(config)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mlwf-parse-") as scratch:
        root = Path(scratch)
        log = root / "parse.log"
        env = child_env(config, root, root / "airflow.db")  # never created: parsing needs no database
        process = start_child(runtime, "parse", {"dags_folder": str(folder), "log": str(log)}, env, config.project_root)
        try:
            result = next((e for e in _events(process, started + timeout) if e["event"] == "parsed"), None)
        except TimeoutError:
            raise DagFileError(f"parsing {folder} took longer than {timeout:g} s") from None
        finally:
            stop_child(process)
        if result is None:
            raise _died(process, log, f"parsing {folder}")
    return ParseReport(str(folder), [_file(f) for f in result["files"]], time.monotonic() - started)


# -- test -----------------------------------------------------------------------------------


@dataclass
class InProcessRun:
    """One DAG run in the runtime's python against a database of its own, under the state
    directory's `dagcheck/` (deleted afterwards; the migrated template stays, one per Airflow
    version). Iterate `snapshots()`; then `failures` holds the failed tasks' log tails and
    `broken` the other DAG files of the folder that do not import."""

    config: Config
    runtime: Runtime
    dag_id: str
    conf: dict
    timeout: float = 3600.0
    failures: list[TaskFailure] = field(default_factory=list)
    broken: list[ParsedFile] = field(default_factory=list)  # other DAG files that do not import

    @property
    def log_path(self) -> Path:
        """The last test run's whole log (Airflow's and the tasks'), kept per DAG."""
        return self.config.home_dir / SCRATCH / f"{self.dag_id}.log"

    def snapshots(self) -> Iterator[RunSnapshot]:
        from mlflowctl.runs import RunWaitTimedOut
        from mlflowctl.state import ensure_home

        if not DAG_ID.fullmatch(self.dag_id):
            raise UsageError(f"{self.dag_id!r} is not a DAG id (letters, digits, '_', '.', '-'; at most 250)")
        folder = dags_folder(self.config)
        ensure_home(self.config.home_dir, self.config.project_root)
        base = self.config.home_dir / SCRATCH
        base.mkdir(mode=0o700, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f"test-{self.dag_id[:40]}-", dir=base))
        log = scratch / "run.log"
        plan = {
            "dags_folder": str(folder),
            "dag_id": self.dag_id,
            "conf": self.conf,
            "log": str(log),
            "database": str(scratch / "airflow.db"),
            "template": str(base / f"template-{self.runtime.version}.db"),
            "task_preload": list(self.config.task_preload),
        }
        started = time.monotonic()
        process = start_child(self.runtime, "test", plan, child_env(self.config, scratch, scratch / "airflow.db"),
                              self.config.project_root)
        last = None
        try:
            for event in _events(process, started + self.timeout):
                kind = event["event"]
                if kind == "snapshot":
                    last = _snapshot(event, time.monotonic() - started)
                    yield last
                elif kind == "broken":
                    self.broken = [_file(f) for f in event["files"]]
                elif kind == "done":
                    self.failures = _failures(last, event["failures"])
                    return
                else:
                    raise _refusal(self.dag_id, folder, event)
            raise _died(process, log, f"the test run of DAG '{self.dag_id}'")
        except TimeoutError:
            if last is None:
                raise TimeoutExpired(f"DAG '{self.dag_id}' did not start within {self.timeout:g} s") from None
            raise RunWaitTimedOut(
                f"test run of DAG '{self.dag_id}' still {last.run.state} after {self.timeout:g} s; stopped",
                snapshot=last,
            ) from None
        finally:
            stop_child(process)
            if log.exists():
                os.replace(log, self.log_path)
            shutil.rmtree(scratch, ignore_errors=True)


def _snapshot(event: dict, elapsed: float) -> RunSnapshot:
    from mlflowctl.api.airflow import DagRun, TaskInstance
    from mlflowctl.runs import RunSnapshot

    return RunSnapshot(DagRun.from_api(event["run"]), [TaskInstance.from_api(t) for t in event["tasks"]], elapsed)


def _failures(snapshot: RunSnapshot | None, reported: list[dict]) -> list[TaskFailure]:
    from mlflowctl.runs import TaskFailure

    tasks = {t.task_id: t for t in snapshot.tasks} if snapshot else {}
    return [TaskFailure(tasks[f["task_id"]], f["log_tail"]) for f in reported if f["task_id"] in tasks]


def _refusal(dag_id: str, folder: Path, event: dict) -> Exception:
    kind = event["event"]
    if kind == "import_error":
        broken = [_file(f) for f in event["files"]]
        others = f" (and {len(broken) - 1} more file{'s' if len(broken) > 2 else ''})" if len(broken) > 1 else ""
        return DagFileError(
            f"DAG '{dag_id}' not found: {describe(broken[0])}{others}",
            hint="the DAG files that do not import: `mlwf parse`",
        )
    if kind == "unknown":
        known = ", ".join(event["dag_ids"]) or "none"
        return NotFoundError(f"DAG '{dag_id}' not found in {folder} (its DAGs: {known})")
    if kind == "refused":
        return UsageError(f"--conf does not fit DAG '{dag_id}': {event['message']}")
    if kind == "preload_failed":
        return MissingDependencyError(
            event["message"].removeprefix("mlwf: "),
            hint="install it in the Airflow runtime, or take it out of task_preload (mlwf.toml or MLWF_TASK_PRELOAD)",
        )
    return RunFailedError(f"unexpected report from the test run: {kind}")
