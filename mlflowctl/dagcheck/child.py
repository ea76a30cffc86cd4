"""The runtime side of `mlwf parse` and `mlwf test`: run in the Airflow runtime's python, by path.

    python child.py parse '{"dags_folder": ...}'
    python child.py test '{"dags_folder": ..., "dag_id": ..., "conf": {...}, ...}'

Airflow reads its settings from the environment the CLI built (the project's, with a database
of this run's own). Airflow and the DAGs log to stdout and stderr, which this script sends to
`plan["log"]`; its own output is JSON lines on a private copy of stdout, one object each:

- parse: one `{"event": "parsed", "files": [...], "timeout": S}`.
- test: `{"event": "snapshot", "run": {...}, "tasks": [...]}` whenever a task starts or ends
  (the REST API's shapes, so the CLI reads them as it reads the API's answers), then
  `{"event": "done", "failures": [...]}`; or one of `{"event": "import_error", ...}`,
  `{"event": "unknown", ...}`, `{"event": "refused", ...}`, `{"event": "preload_failed", ...}`
  instead of running; before the run, `{"event": "broken", "files": [...]}` when other DAG
  files do not import.

Stdlib, SQLAlchemy and Airflow only: the runtime need not have mlwf installed.
"""

from __future__ import annotations

import gc
import json
import os
import re
import sys
import time

#: Traceback frames kept per import error: enough to reach the DAG file's own line.
TRACEBACK_DEPTH = 30
LOG_TAIL_LINES = 20
GC_THRESHOLD = 7000  # new objects between two collections of the youngest generation (Python's: 700)
_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+)', re.MULTILINE)

_events = sys.stdout


def emit(**event) -> None:
    _events.write(json.dumps(event, default=str) + "\n")
    _events.flush()


def error_summary(filepath: str, trace: str) -> dict:
    """An import error as file, line (the DAG file's own last frame, else the last frame) and last line."""
    frames = [(m["file"], int(m["line"])) for m in _FRAME.finditer(trace)]
    own = [line for file, line in frames if os.path.abspath(file) == os.path.abspath(filepath)]
    lines = [line for line in trace.rstrip().splitlines() if line.strip()]
    # The exception's own line: the first one after the last frame that is not the frame's code
    # (an exception's message may go on over more lines, e.g. Airflow's import timeout).
    after = max((i for i, line in enumerate(lines) if _FRAME.match(line)), default=-1) + 1
    message = [line for line in lines[after:] if not line.startswith(" ")] or lines[after:] or lines
    return {
        "line": own[-1] if own else (frames[-1][1] if frames else None),
        "last": message[0].strip() if message else "unknown error",
        "trace": trace,
    }


def _bag_class():
    """DagBag, recording which DAGs were refused as a duplicate id or for a cycle."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.exceptions import AirflowDagDuplicatedIdException
    from airflow.sdk.exceptions import AirflowDagCycleException

    class Bag(DagBag):
        def __init__(self, *args, **kwargs):
            self.refusals: dict[str, dict] = {}  # file -> kind, dag id, message
            super().__init__(*args, **kwargs)

        def bag_dag(self, dag):
            try:
                super().bag_dag(dag)
            except AirflowDagCycleException as exc:
                self.refusals[dag.fileloc] = {"kind": "cycle", "dag_id": dag.dag_id, "message": str(exc)}
                raise
            except AirflowDagDuplicatedIdException as exc:
                self.refusals[dag.fileloc] = {"kind": "duplicate", "dag_id": dag.dag_id, "message": str(exc)}
                raise

    return Bag


def pre_import(paths: list[str]) -> None:
    """The Airflow modules the DAG files import, imported before the files are, as the
    dag-processor does (`[dag_processor] parsing_pre_import_modules`): a file's parse time is
    then its own, as the processor's import timeout sees it. A module that fails here fails
    again in the file's own import, which reports it."""
    from importlib import import_module

    from airflow.configuration import conf
    from airflow.utils.file import iter_airflow_imports

    if not conf.getboolean("dag_processor", "parsing_pre_import_modules", fallback=True):
        return
    for path in paths:
        for module in iter_airflow_imports(path):
            try:
                import_module(module)
            except Exception:
                pass


def parse_folder(folder: str) -> tuple[object, list[dict]]:
    """Every DAG file of `folder` imported as the dag-processor does, each timed on its own."""
    from airflow import settings
    from airflow.configuration import conf
    from airflow.dag_processing.importers import get_importer_registry

    bag = _bag_class()(dag_folder=folder, collect_dags=False)
    safe_mode = conf.getboolean("core", "DAG_DISCOVERY_SAFE_MODE")
    paths = sorted(get_importer_registry().list_dag_files(folder, safe_mode=safe_mode))
    pre_import(paths)
    settle()  # the DAG files' own code runs with the collector on, as in Airflow
    files = []
    for path in paths:
        started = time.perf_counter()
        found = bag.process_file(path, only_if_updated=False, safe_mode=safe_mode)
        seconds = time.perf_counter() - started
        entry = {
            "path": path,
            "file": os.path.relpath(path, folder),
            "seconds": seconds,
            "timeout": settings.get_dagbag_import_timeout(path),
            "dags": sorted(dag.dag_id for dag in found),
            "warnings": list(bag.captured_warnings.get(path, ())),
            "error": None,
        }
        trace = bag.import_errors.get(path)  # keyed by the path given (no bundle here)
        if trace is not None:
            entry["error"] = {"kind": "import", **error_summary(path, trace)}
            refusal = bag.refusals.get(path)
            if refusal:
                entry["error"].update(kind=refusal["kind"], dag_id=refusal["dag_id"], last=refusal["message"])
        files.append(entry)
    return bag, files


def parse(plan: dict) -> int:
    decline_trio()
    from airflow.configuration import conf

    _, files = parse_folder(plan["dags_folder"])
    emit(event="parsed", files=files, timeout=conf.getfloat("core", "dagbag_import_timeout"))
    return 0


# -- test ---------------------------------------------------------------------------------


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def _state(value) -> str | None:
    return None if value is None else str(getattr(value, "value", value))


def snapshot(dag_id: str, run_id: str) -> dict:
    """The run and its task instances, as the REST API shows them."""
    from sqlalchemy import select

    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        tis = session.scalars(
            select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
        ).all()
        end = run.end_date
        return {
            "run": {
                "dag_id": dag_id,
                "dag_run_id": run_id,
                "state": _state(run.state),
                "run_type": _state(run.run_type),
                "logical_date": _iso(run.logical_date),
                "run_after": _iso(run.run_after),
                "start_date": _iso(run.start_date),
                "end_date": _iso(end),
                "duration": (end - run.start_date).total_seconds() if end and run.start_date else None,
                "conf": run.conf or {},
            },
            "tasks": [
                {
                    "task_id": ti.task_id,
                    "state": _state(ti.state),
                    "try_number": ti.try_number,
                    "max_tries": ti.max_tries,
                    "map_index": ti.map_index,
                    "start_date": _iso(ti.start_date),
                    "end_date": _iso(ti.end_date),
                    "duration": ti.duration,
                    "operator": ti.operator,
                }
                for ti in tis
            ],
        }


def _prepare_database(plan: dict) -> None:
    """This run's metadata database: a copy of the migrated template, made once per Airflow version.
    Copied through SQLite's backup API, which sees what is committed whatever the journal mode."""
    template, database = plan["template"], plan["database"]
    if not os.path.exists(template):
        from airflow.utils import db

        db.initdb()
        staging = f"{template}.{os.getpid()}"
        _copy_database(database, staging)
        os.replace(staging, template)
    else:
        _copy_database(template, database)


def _unsynced_database() -> None:
    """This run's database is deleted after the run, so its commits need not wait for the disk:
    SQLite's `synchronous=NORMAL` in the WAL mode Airflow sets (no fsync per commit; ~170 in a
    run of ml_pipeline_dag, one per XCom and state change). Airflow's engines only."""
    from sqlalchemy import event

    from airflow import settings

    def synchronous_normal(connection, _record) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    for engine in (settings.engine, getattr(settings.async_engine, "sync_engine", None)):
        if engine is not None and engine.dialect.name == "sqlite":
            event.listen(engine, "connect", synchronous_normal)
            engine.dispose()  # a connection opened before gets it too


def _copy_database(source: str, target: str) -> None:
    import sqlite3

    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    src.close()
    dst.close()


def _backend_script(name: str):
    """A script of mlflowctl/backends/ loaded by path (stdlib at import; the runtime need not
    have mlwf installed)."""
    from importlib.util import module_from_spec, spec_from_file_location

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "backends", f"{name}.py")
    spec = spec_from_file_location(f"mlwf_{name}", path)
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _apply_fixes() -> None:
    module = _backend_script("airflow_fixes")
    for fix in (module.fix_dag_test_deadline, module.newest_execution_api):
        if not fix():
            print(f"mlwf: {fix.__name__} refused: Airflow differs from what it was written for", file=sys.stderr)


def _watch_tasks(log_path: str, tails: dict) -> None:
    """Wrap dag.test()'s task runner: a snapshot before and after each task, and each task's
    part of the log kept (tasks run one at a time here) for the tails of failed tasks."""
    from airflow.sdk.definitions import dag as dag_module

    run_task = dag_module._run_task

    def _run_task(*, ti, **kwargs):
        start = os.path.getsize(log_path)
        current = snapshot(ti.dag_id, ti.run_id)
        for task in current["tasks"]:
            if task["task_id"] == ti.task_id and task["map_index"] == ti.map_index:
                task["state"] = "running"
        emit(event="snapshot", **current)
        try:
            return run_task(ti=ti, **kwargs)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            with open(log_path, "rb") as log:
                log.seek(start)
                lines = log.read().decode("utf-8", "replace").splitlines()
            tails[ti.task_id] = lines[-LOG_TAIL_LINES:]
            emit(event="snapshot", **snapshot(ti.dag_id, ti.run_id))

    dag_module._run_task = _run_task


def test(plan: dict) -> int:
    # The tasks start with the project's task_preload imported, as on its stack. Imported before
    # Airflow (and kept out of the collector with it): skops, as it is imported, looks for ~900
    # types in every loaded module, ~2,000 here against ~3,300 once Airflow is in.
    failed = _backend_script("launcher").import_task_modules(tuple(plan.get("task_preload") or ()))
    if failed:
        emit(event="preload_failed", message=failed)
        return 0
    decline_trio()
    _unsynced_database()
    _prepare_database(plan)
    bag, files = parse_folder(plan["dags_folder"])
    dag = bag.dags.get(plan["dag_id"])
    broken = [f for f in files if f["error"]]
    if dag is None:
        if broken:
            emit(event="import_error", files=broken)
        else:
            emit(event="unknown", dag_ids=sorted(bag.dags))
        return 0
    if broken:
        emit(event="broken", files=broken)  # other files: the run goes on, the CLI warns
    _apply_fixes()
    settle()
    tails: dict[str, list[str]] = {}
    _watch_tasks(plan["log"], tails)
    from airflow.exceptions import ParamValidationError

    try:
        run = dag.test(run_conf=plan["conf"] or None)
    except ParamValidationError as exc:
        emit(event="refused", message=str(exc))
        return 0
    final = snapshot(run.dag_id, run.run_id)
    emit(event="snapshot", **final)
    failed = [t for t in final["tasks"] if t["state"] == "failed"]
    emit(
        event="done",
        failures=[{"task_id": t["task_id"], "log_tail": tails.get(t["task_id"], ["(no log found)"])} for t in failed],
    )
    return 0


def decline_trio() -> None:
    """httpcore, which Airflow imports, tries `import trio` (~50-90 ms of a parse here); Airflow
    never runs under trio. A None entry makes that import fail fast, as mlwf's CLI does
    (mlflowctl/cli/__init__.py), until settle() lets the DAG files have it. Called after
    task_preload, whose libraries may need it."""
    sys.modules.setdefault("trio", None)


def settle() -> None:
    """Keep what is in memory now out of the garbage collector's sight (gc.freeze) and let it
    run: its full collections then look only at newer objects. A collection every 7,000 new
    objects instead of 700: a run of ml_pipeline_dag collected 900 times (0.6-0.7 s of CPU),
    at 7,000 90 times (0.3 s), while the garbage it leaves waiting stays a few thousand objects."""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    gc.enable()
    if "trio" in sys.modules and sys.modules["trio"] is None:
        del sys.modules["trio"]  # declined for Airflow's imports only: DAG files may use it


def main() -> int:
    global _events
    mode, plan = sys.argv[1], json.loads(sys.argv[2])
    # Importing Airflow makes ~300,000 objects that live as long as this process and little
    # garbage; each full collection among them cost 0.2-0.3 s (1.6 s of a test run's CPU).
    # The collector is off until settle(); at exit (finally) its last collection skips them too.
    gc.disable()
    _events = os.fdopen(os.dup(1), "w")
    log = os.open(plan["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.environ["AIRFLOW__CORE__DAGBAG_IMPORT_ERROR_TRACEBACK_DEPTH"] = str(TRACEBACK_DEPTH)
    try:
        return {"parse": parse, "test": test}[mode](plan)
    finally:
        gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
