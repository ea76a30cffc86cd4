"""Start Airflow components from one pre-imported interpreter (run as a script, stdlib + Airflow).

Every `airflow <component>` process spends ~4 s of CPU importing Airflow before it does
anything; four components and `db migrate` cost ~20 s of CPU, ~10 s of wall time on two
cores. This launcher imports Airflow and its CLI once, then forks each component, which
then runs `airflow <args>` exactly as the command line would (Airflow disposes of the
inherited database engine in forked children itself: `settings.py` registers an at-fork
hook). The children share the imported pages copy-on-write, which also lowers the
stack's memory (PSS).

Each child becomes the leader of its own session, restores default SIGINT/SIGTERM, reads
stdin from /dev/null and appends its output to its own log file. The launcher prints one
JSON line per event on stdout, waits for nothing but the migration, and exits.

Usage (by mlwf): <runtime python> launcher.py '<json plan>'
plan = {"migrate": bool, "migrate_log": path,
        "services": [{"name": str, "args": [str], "log": path}]}
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys


PRELOAD = (
    "airflow.utils.serve_logs.log_server",
    "airflow.jobs.scheduler_job_runner",
    "airflow.jobs.triggerer_job_runner",
    "airflow.dag_processing.manager",
)


def _emit(**event) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _child(args: list[str], log: str, *, new_session: bool) -> None:
    """In the forked child: detach, redirect, run `airflow <args>`, never return."""
    code = 1
    try:
        if new_session:
            os.setsid()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(null)
        os.close(out)
        sys.argv = ["airflow", *args]
        try:  # `ps` shows `airflow scheduler`, not the launcher's command line
            from setproctitle import setproctitle

            setproctitle(" ".join(sys.argv))
        except ImportError:
            pass
        from airflow.__main__ import main

        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main() -> int:
    plan = json.loads(sys.argv[1])
    # The imports every component needs: paid once here, shared by every fork.
    import airflow  # noqa: F401  (configures settings and the ORM)
    import airflow.__main__  # noqa: F401
    import airflow.models  # noqa: F401
    from airflow.cli import cli_parser

    cli_parser.get_parser()
    # Shared by several components: the log server app (scheduler, triggerer; fastapi as in
    # the api-server) and the job runners, which import most of each other's modules.
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # a preload is an optimisation only: the child imports it again
            pass
    _emit(event="imported")

    if plan.get("migrate"):
        pid = os.fork()
        if pid == 0:
            _child(["db", "migrate"], plan["migrate_log"], new_session=False)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            _emit(event="migrate_failed", code=code)
            return 3
        _emit(event="migrated")

    for service in plan["services"]:
        pid = os.fork()
        if pid == 0:
            _child(service["args"], service["log"], new_session=True)
        _emit(event="started", name=service["name"], pid=pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
