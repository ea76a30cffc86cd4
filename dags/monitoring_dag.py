"""monitoring_dag: hourly health checks of the Airflow deployment, alerts when something is wrong.

check_dag_runs -> check_task_failures -> check_scheduler_health -> generate_health_report -> send_alerts.
Task code in Airflow 3 may not touch the metadata database, so the checks read the REST API
(``mlpipeline.airflow_api``) with the credentials of the connection ``mlwf_api`` (or
``MLWF_AIRFLOW_URL``/``MLWF_AIRFLOW_USER``/``MLWF_AIRFLOW_PASSWORD``). The rules are the pure
functions of ``mlpipeline.monitoring`` that ``mlwf health`` uses too, with the limits of
``mlpipeline.thresholds``. An API the checks cannot read is itself a critical finding.
``send_alerts`` runs only when a finding is warning or worse. Each task's dict goes to XCom
whole (``multiple_outputs=False``; Airflow would infer a push per key from ``-> dict``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.sdk import Param, dag, task

DAG_ID = "monitoring_dag"
CONN_ID = "mlwf_api"


def _api():
    """An AirflowApi built from the connection mlwf_api, else from MLWF_AIRFLOW_* variables."""
    import logging

    from mlpipeline.airflow_api import AirflowApi, credentials_from_connection, credentials_from_env

    try:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(CONN_ID)
        creds = credentials_from_connection(
            conn_type=conn.conn_type, host=conn.host, port=conn.port, login=conn.login,
            password=conn.password, schema=conn.schema,
        )
    except Exception as exc:  # noqa: BLE001 - no such connection: fall back to the environment
        logging.getLogger(__name__).info("connection %s not usable (%s); using MLWF_AIRFLOW_*", CONN_ID, exc)
        creds = credentials_from_env()
    return AirflowApi(creds)


def _checked(rule: str, fn) -> list[dict[str, Any]]:
    """Run one check; an unreadable API becomes a critical finding instead of a crash."""
    from mlpipeline.airflow_api import AirflowApiError
    from mlpipeline.monitoring import CRITICAL, Finding

    try:
        return [f.to_dict() for f in fn()]
    except AirflowApiError as exc:
        return [Finding("api_reachable", CRITICAL, None, None, f"{rule}: {exc}", "airflow-api").to_dict()]


def _since(params: dict) -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=params["window_hours"])


def _should_alert(context: Any) -> bool:
    """run_if condition of send_alerts: the report holds a warning or worse."""
    from mlpipeline.monitoring import WARNING, at_least

    report = context["ti"].xcom_pull(task_ids="generate_health_report") or {}
    return at_least(report.get("worst", "critical"), WARNING)


@dag(
    dag_id=DAG_ID,
    description="Hourly health checks of the Airflow deployment (REST API), alerts on warning or worse",
    schedule="@hourly",
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["mlwf", "monitoring"],
    default_args={
        "owner": "mlwf",
        "retries": 1,
        "retry_delay": dt.timedelta(minutes=1),
        "execution_timeout": dt.timedelta(minutes=5),
    },
    params={
        "window_hours": Param(24, type="integer", minimum=1, maximum=24 * 30, description="look-back window"),
    },
    doc_md=__doc__,
)
def monitoring_dag() -> None:
    @task(multiple_outputs=False)
    def check_dag_runs(params: dict | None = None, run_id: str | None = None) -> dict:
        from collections import Counter

        from mlpipeline import monitoring as m

        def rules() -> list:
            with _api() as api:
                runs = api.dag_runs(since=_since(params))
                running = api.dag_runs(state="running")
            found = []
            outcomes: dict[str, Counter] = {}
            for r in runs:
                outcomes.setdefault(r["dag_id"], Counter())[r.get("state")] += 1
            for dag_id, c in sorted(outcomes.items()):
                found.append(m.check_success_ratio(c["success"], c["failed"], subject=dag_id))
            if not outcomes:
                found.append(m.check_success_ratio(0, 0))
            durations = {
                f"{r['dag_id']}/{r['dag_run_id']}": m.age_seconds(r.get("start_date")) or 0.0
                for r in running
                if not (r["dag_id"] == DAG_ID and r["dag_run_id"] == run_id)
            }
            return found + m.check_long_running(durations)

        return {"findings": _checked("check_dag_runs", rules)}

    @task(multiple_outputs=False)
    def check_task_failures(state: dict, params: dict | None = None) -> dict:
        from mlpipeline import monitoring as m

        def rules() -> list:
            with _api() as api:
                total, recent = api.failed_task_instances(since=_since(params))
            finding = m.check_task_failures(total, subject=f"the last {params['window_hours']} h")
            if recent:
                names = ", ".join(f"{t['dag_id']}.{t['task_id']}" for t in recent[:5])
                finding = m.Finding(**{**finding.to_dict(), "message": f"{finding.message} (latest: {names})"})
            return [finding]

        return {"findings": state["findings"] + _checked("check_task_failures", rules)}

    @task(multiple_outputs=False)
    def check_scheduler_health(state: dict) -> dict:
        from mlpipeline import monitoring as m

        def rules() -> list:
            with _api() as api:
                health = api.health()
                import_errors = api.import_error_count()
            beat = (health.get("scheduler") or {}).get("latest_scheduler_heartbeat")
            return [m.check_heartbeat_age(m.age_seconds(beat)), m.check_import_errors(import_errors)]

        return {"findings": state["findings"] + _checked("check_scheduler_health", rules)}

    @task(multiple_outputs=False)
    def generate_health_report(state: dict, run_id: str | None = None) -> dict:
        from mlpipeline.files import atomic_write_json
        from mlpipeline.monitoring import summarize
        from mlpipeline.settings import load_settings, safe_run_id

        report = summarize(state["findings"])
        report["generated_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        report["run_id"] = run_id
        out = load_settings().health_dir
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"report-{safe_run_id(run_id)}.json"
        for target in (path, out / "latest.json"):
            atomic_write_json(target, report, default=str)
        print(f"health: {report['worst']} {report['counts']} -> {path}")
        return {"worst": report["worst"], "counts": report["counts"], "report_path": str(path)}

    @task.run_if(_should_alert, skip_message="all findings ok: no alert")
    @task(multiple_outputs=False)
    def send_alerts(report: dict) -> dict:
        import json

        from mlpipeline.notifications import notify

        findings = json.loads(open(report["report_path"]).read())["findings"]
        bad = [f for f in findings if f["severity"] != "ok"]
        record = notify(
            "health_alert",
            f"Airflow health is {report['worst']}: " + "; ".join(f["message"] for f in bad),
            severity=report["worst"],
            payload={"counts": report["counts"], "report_path": report["report_path"], "findings": bad},
        )
        return {"event": record["event"], "webhook": record["webhook"]["status"], "findings": len(bad)}

    state = check_dag_runs()
    state = check_task_failures(state)
    state = check_scheduler_health(state)
    send_alerts(generate_health_report(state))


monitoring_dag()
