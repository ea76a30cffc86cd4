"""Notifications: every event goes to a JSON-lines log, and to a webhook when one is set.

One line per notification, written with a single ``write`` on a file opened with
``O_APPEND`` under an exclusive ``flock``, so concurrent writers (parallel tasks, the
deadline callback) never interleave. The line records the webhook outcome: a failed send
is in the log with its error, and in the returned record, never swallowed. The pipeline
fails because of a notification only when the caller asks (``raise_on_failure=True``).
A webhook gets one overall deadline for all its attempts, and only its answer's status is
read (`mlpipeline.remote`); URLs in the text and payload are recorded with credentials redacted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlpipeline.remote import Deadline, post_json, redact_text, redact_url

log = logging.getLogger(__name__)

SEVERITIES = ("info", "warning", "critical")


class NotificationError(RuntimeError):
    """A notification could not be delivered and the caller asked for that to be fatal."""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def append_jsonl(path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Append one JSON line atomically (one write, O_APPEND, flock); creates parent dirs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, default=str, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            view = memoryview(line)
            while view:  # a regular-file write is whole in practice; loop anyway, under the lock
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def read_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every record of a notification log, oldest first ([] when it does not exist)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _retryable(exc: BaseException) -> bool:
    import httpx

    if isinstance(exc, httpx.TransportError):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500 or exc.response.status_code == 429
    return False


def post_webhook(
    url: str,
    payload: Mapping[str, Any],
    *,
    timeout: float = 5.0,
    deadline: float = 15.0,
    attempts: int = 3,
    backoff: float = 0.5,
    transport: Any = None,
) -> dict[str, Any]:
    """POST ``payload`` as JSON; retry connection errors, 429 and 5xx with exponential backoff,
    all attempts within `deadline` seconds (`timeout` bounds each network operation).

    Returns ``{"status": "sent"|"failed", "attempts", "http_status", "error", "url"}``; never raises
    for delivery problems (the caller decides what a failure means).
    """
    import httpx
    from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_exponential

    outcome: dict[str, Any] = {"url": redact_url(url, keep_path=False), "attempts": 0, "http_status": None,
                               "error": None}
    body = json.dumps(payload, default=str).encode()  # datetimes (Airflow's deadline_time) become ISO text
    try:
        with Deadline(deadline) as limit, httpx.Client(transport=transport) as client:
            for attempt in Retrying(
                stop=stop_after_attempt(max(1, attempts)) | stop_after_delay(deadline),
                wait=wait_exponential(multiplier=backoff, min=backoff, max=max(backoff, 30.0)),
                retry=retry_if_exception(_retryable),
                reraise=True,
            ):
                with attempt:
                    outcome["attempts"] += 1
                    try:
                        outcome["http_status"] = post_json(client, url, body, limit, timeout=timeout)
                    except httpx.HTTPStatusError as exc:
                        outcome["http_status"] = exc.response.status_code
                        raise
        outcome["status"] = "sent"
    except Exception as exc:  # noqa: BLE001 - any delivery problem is reported, never raised
        outcome["status"] = "failed"
        if isinstance(exc, httpx.HTTPStatusError):
            outcome["error"] = f"HTTP {exc.response.status_code} from webhook"
        else:
            text = redact_text(str(exc))
            outcome["error"] = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return outcome


def _redacted(value: Any) -> Any:
    """`value` (JSON data) with every URL in its strings redacted."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def notify(
    event: str,
    message: str,
    *,
    severity: str = "info",
    payload: Mapping[str, Any] | None = None,
    log_path: str | os.PathLike[str] | None = None,
    webhook_url: str | None = None,
    timeout: float = 5.0,
    deadline: float = 15.0,
    attempts: int = 3,
    backoff: float = 0.5,
    raise_on_failure: bool = False,
    transport: Any = None,
) -> dict[str, Any]:
    """Record a notification and deliver it to the webhook if one is configured.

    ``log_path``/``webhook_url`` default to the pipeline settings (``MLWF_*`` environment).
    Returns the record written to the log, including ``webhook`` (the delivery outcome).
    Raises NotificationError on a failed delivery only when ``raise_on_failure``.
    """
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, got {severity!r}")
    if log_path is None or webhook_url is None:
        from mlpipeline.settings import load_settings

        settings = load_settings()
        log_path = settings.notifications_log if log_path is None else log_path
        webhook_url = settings.webhook_url if webhook_url is None else webhook_url
    record: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "time": _now(),
        "event": event,
        "severity": severity,
        "message": redact_text(message),
        # JSON-safe once, so the log line and the webhook body are the same document
        "payload": _redacted(json.loads(json.dumps(dict(payload or {}), default=str))),
    }
    if webhook_url:
        record["webhook"] = post_webhook(
            webhook_url, record, timeout=timeout, deadline=deadline, attempts=attempts, backoff=backoff,
            transport=transport,
        )
    else:
        record["webhook"] = {"status": "not_configured"}
    append_jsonl(log_path, record)
    if record["webhook"]["status"] == "failed":
        text = (
            f"notification {event!r} not delivered to {record['webhook']['url']} after "
            f"{record['webhook']['attempts']} attempt(s): {record['webhook']['error']}"
        )
        log.error(text)
        if raise_on_failure:
            raise NotificationError(text)
    else:
        status = record["webhook"]["status"]
        log.info("notification %s (%s): %s [webhook: %s]", event, severity, record["message"], status)
    return record


def deadline_missed(context: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Airflow Deadline Alert callback: notify that a DAG run missed its deadline.

    Airflow calls it (``SyncCallback("mlpipeline.notifications.deadline_missed", kwargs=...)``)
    with ``context={"dag_run": {...}, "deadline": {"deadline_time": ...}}`` plus the alert's kwargs.
    """
    context = context or {}
    run = context.get("dag_run") or {}
    deadline = context.get("deadline") or {}
    dag_id = run.get("dag_id") or kwargs.get("dag_id") or "unknown dag"
    run_id = run.get("dag_run_id") or run.get("run_id") or "unknown run"
    message = (
        f"{dag_id} run {run_id} missed its deadline ({deadline.get('deadline_time', 'unknown time')});"
        f" state: {run.get('state', 'unknown')}"
    )
    with contextlib.suppress(Exception):
        logging.getLogger("airflow.task").warning(message)
    return notify(
        "deadline_missed",
        message,
        severity="warning",
        payload={
            "dag_id": dag_id,
            "run_id": run_id,
            "state": run.get("state"),
            "deadline_time": deadline.get("deadline_time"),
            "deadline_minutes": kwargs.get("deadline_minutes"),
        },
    )
