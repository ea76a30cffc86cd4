"""A small typed client for the Airflow 3 REST API v2, on httpx (as Airflow's own airflow-ctl).

One method per endpoint, results parsed into dataclasses. Every failure leaves through
`_call`, the one place where HTTP statuses and connection errors become mlwf exceptions
(and so exit codes). Connection errors are retried with bounded exponential backoff;
requests that may have reached the server are retried only when they are idempotent.

This module imports httpx at the top: the CLI imports it inside command functions only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import httpx

from mlflowctl.api.auth import TOKEN_FILE, TokenAuth, TokenCache
from mlflowctl.errors import (
    ApiError,
    AuthError,
    MlwfError,
    NotFoundError,
    TimeoutExpired,
    UnreachableError,
    UsageError,
)

RETRY_FOR_S = 8.0
PAGE = 100
RUN_DONE = frozenset({"success", "failed"})
TASK_DONE = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _str(data: dict, key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise TypeError(f"{key!r} is not a string")
    return value


def _opt_str(data: dict, key: str) -> str | None:
    return None if data.get(key) is None else _str(data, key)


def _opt_number(data: dict, key: str) -> float | None:
    value = data.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise TypeError(f"{key!r} is not a number")
    return value


def _opt_text(value: Any) -> str | None:
    return None if value is None else str(value)


def new_run_id() -> str:
    """`manual__<UTC time>__<random>`: what Airflow names a manual run, made unique by the client
    (it matches Airflow's default `allowed_run_id_pattern`)."""
    import secrets

    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return f"manual__{now}__{secrets.token_hex(4)}"


def _q(part: str) -> str:
    """Run ids hold ':' and '+': quote every path segment with nothing kept safe."""
    return quote(part, safe="")


@dataclass(frozen=True)
class Dag:
    dag_id: str
    is_paused: bool
    schedule: str | None
    description: str | None = None
    tags: tuple[str, ...] = ()
    has_import_errors: bool = False
    next_run: datetime | None = None
    fileloc: str | None = None

    @classmethod
    def from_api(cls, data: dict) -> Dag:
        return cls(
            dag_id=_str(data, "dag_id"),
            is_paused=bool(data.get("is_paused")),
            schedule=_opt_str(data, "timetable_summary"),
            description=_opt_str(data, "description"),
            tags=tuple(sorted(_str(t, "name") for t in data.get("tags") or [])),
            has_import_errors=bool(data.get("has_import_errors")),
            next_run=parse_time(data.get("next_dagrun_run_after")),
            fileloc=_opt_str(data, "fileloc"),
        )


@dataclass(frozen=True)
class DagRun:
    dag_id: str
    run_id: str
    state: str
    run_type: str | None = None
    logical_date: datetime | None = None
    run_after: datetime | None = None
    start_date: datetime | None = None
    end_date: datetime | None = None
    duration: float | None = None
    conf: dict = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.state in RUN_DONE

    @classmethod
    def from_api(cls, data: dict) -> DagRun:
        return cls(
            dag_id=_str(data, "dag_id"),
            run_id=_str(data, "dag_run_id"),
            state=_opt_str(data, "state") or "none",
            run_type=_opt_str(data, "run_type"),
            logical_date=parse_time(data.get("logical_date")),
            run_after=parse_time(data.get("run_after")),
            start_date=parse_time(data.get("start_date")),
            end_date=parse_time(data.get("end_date")),
            duration=_opt_number(data, "duration"),
            conf=dict(data.get("conf") or {}),
        )


@dataclass(frozen=True)
class TaskInstance:
    task_id: str
    state: str
    try_number: int
    max_tries: int = 0
    map_index: int = -1
    start_date: datetime | None = None
    end_date: datetime | None = None
    duration: float | None = None
    operator: str | None = None

    @property
    def done(self) -> bool:
        return self.state in TASK_DONE

    @classmethod
    def from_api(cls, data: dict) -> TaskInstance:
        return cls(
            task_id=_str(data, "task_id"),
            state=_opt_str(data, "state") or "none",
            try_number=int(data.get("try_number") or 0),
            max_tries=int(data.get("max_tries") or 0),
            map_index=int(data.get("map_index", -1)),
            start_date=parse_time(data.get("start_date")),
            end_date=parse_time(data.get("end_date")),
            duration=_opt_number(data, "duration"),
            operator=_opt_str(data, "operator"),
        )


@dataclass(frozen=True)
class Task:
    """A task of a DAG (not of a run): its place in the graph."""

    task_id: str
    downstream_task_ids: tuple[str, ...] = ()
    is_mapped: bool = False

    @classmethod
    def from_api(cls, data: dict) -> Task:
        downstream = data.get("downstream_task_ids") or []
        if not isinstance(downstream, list):
            raise TypeError("'downstream_task_ids' is not a list")
        return cls(
            task_id=_str(data, "task_id"),
            downstream_task_ids=tuple(str(t) for t in downstream),
            is_mapped=bool(data.get("is_mapped")),
        )


@dataclass(frozen=True)
class Backfill:
    id: int
    dag_id: str
    from_date: datetime | None
    to_date: datetime | None
    reprocess_behavior: str
    max_active_runs: int
    is_paused: bool = False
    completed_at: datetime | None = None

    @classmethod
    def from_api(cls, data: dict) -> Backfill:
        return cls(
            id=int(data["id"]),
            dag_id=_str(data, "dag_id"),
            from_date=parse_time(data.get("from_date")),
            to_date=parse_time(data.get("to_date")),
            reprocess_behavior=_opt_str(data, "reprocess_behavior") or "none",
            max_active_runs=int(data.get("max_active_runs") or 0),
            is_paused=bool(data.get("is_paused")),
            completed_at=parse_time(data.get("completed_at")),
        )


@dataclass(frozen=True)
class Connection:
    """A connection as the API shows it: `password` and secret `extra` keys come back as '***'."""

    connection_id: str
    conn_type: str
    host: str | None = None
    login: str | None = None
    schema: str | None = None
    port: int | None = None
    password: str | None = None
    extra: str | None = None  # a JSON object as text
    description: str | None = None

    @classmethod
    def from_api(cls, data: dict) -> Connection:
        port = data.get("port")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
            raise TypeError("'port' is not an integer")
        return cls(
            connection_id=_str(data, "connection_id"),
            conn_type=_str(data, "conn_type"),
            host=_opt_str(data, "host"),
            login=_opt_str(data, "login"),
            schema=_opt_str(data, "schema"),
            port=port,
            password=_opt_str(data, "password"),
            extra=_opt_str(data, "extra"),
            description=_opt_str(data, "description"),
        )


@dataclass(frozen=True)
class Variable:
    """A variable; the API shows a secret one's value (or secret keys of a JSON one) as '***'."""

    key: str
    value: str | None
    description: str | None = None

    @classmethod
    def from_api(cls, data: dict) -> Variable:
        return cls(key=_str(data, "key"), value=_opt_str(data, "value"), description=_opt_str(data, "description"))


@dataclass(frozen=True)
class Pool:
    name: str
    slots: int
    description: str | None = None
    include_deferred: bool = False

    @classmethod
    def from_api(cls, data: dict) -> Pool:
        slots = data["slots"]
        if isinstance(slots, bool) or not isinstance(slots, int):
            raise TypeError("'slots' is not an integer")
        return cls(
            name=_str(data, "name"),
            slots=slots,
            description=_opt_str(data, "description"),
            include_deferred=bool(data.get("include_deferred")),
        )


@dataclass(frozen=True)
class TaskFailure:
    """A failed task instance of any DAG run (`mlwf health`)."""

    dag_id: str
    run_id: str
    task_id: str
    state: str
    try_number: int = 0
    end_date: datetime | None = None

    @classmethod
    def from_api(cls, data: dict) -> TaskFailure:
        return cls(
            dag_id=_str(data, "dag_id"),
            run_id=_opt_str(data, "dag_run_id") or "",
            task_id=_str(data, "task_id"),
            state=_opt_str(data, "state") or "none",
            try_number=int(data.get("try_number") or 0),
            end_date=parse_time(data.get("end_date")),
        )


@dataclass(frozen=True)
class DagImportError:
    filename: str
    stack_trace: str
    timestamp: datetime | None = None

    @classmethod
    def from_api(cls, data: dict) -> DagImportError:
        return cls(
            filename=_opt_str(data, "filename") or "?",
            stack_trace=_opt_str(data, "stack_trace") or "",
            timestamp=parse_time(data.get("timestamp")),
        )


@dataclass(frozen=True)
class LogRecord:
    """One structured line of a task log (Airflow 3 sends JSON records, not text)."""

    event: str
    timestamp: str | None = None
    level: str | None = None
    logger: str | None = None
    exception: tuple[str, ...] = ()

    @classmethod
    def from_api(cls, item: Any) -> LogRecord:
        if not isinstance(item, dict):
            return cls(event=str(item))
        return cls(
            event=str(item.get("event", "")),
            timestamp=_opt_text(item.get("timestamp")),
            level=_opt_text(item.get("level")),
            logger=_opt_text(item.get("logger")),
            exception=tuple(_exception_lines(item.get("error_detail"))),
        )


AIRFLOW_FRAME = ("/site-packages/airflow/", "/dist-packages/airflow/")


def _exception_lines(details: Any) -> list[str]:
    """A traceback as Python prints it, with runs of Airflow's own frames folded into one line."""
    lines: list[str] = []
    for exc in details or []:
        if not isinstance(exc, dict):
            continue
        lines.append("Traceback (most recent call last):")
        folded = 0
        for frame in exc.get("frames") or []:
            filename = str(frame.get("filename"))
            if any(part in filename for part in AIRFLOW_FRAME):
                folded += 1
                continue
            if folded:
                lines.append(f"  ... {folded} frame(s) inside Airflow")
                folded = 0
            lines.append(f'  File "{filename}", line {frame.get("lineno")}, in {frame.get("name")}')
        if folded:
            lines.append(f"  ... {folded} frame(s) inside Airflow")
        lines.append(f"{exc.get('exc_type')}: {exc.get('exc_value')}")
    return lines


def _detail(response: httpx.Response) -> str:
    """The server's own words: FastAPI's `detail`, a string or a list of validation errors."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return " ".join(response.text.split())[:300]
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return " ".join(str(detail).split())[:300] if detail is not None else " ".join(response.text.split())[:300]


#: At most this long for the Execution API's first answer (~2.3 s of CPU on an idle machine).
EXECUTION_WARMUP_S = 30.0


def warm_execution_api(http: httpx.Client, url: str, within: float) -> None:
    """One request to the Execution API of the api-server at `url`, so that it is ready before a
    task needs it (both backends' `up`, once the stack is healthy).

    The api-server sets up that app's request handling on its first request there: ~2.3 s of
    CPU here, during which it answers nothing else, health included. Left to the first task,
    it stalled `status` for 2.6-4.3 s at the start of a burst (issue 22). Best effort: a stack
    whose api-server does not answer here is judged by its health, not by this.
    """
    try:
        http.get(f"{url.rstrip('/')}/execution/health", timeout=max(1.0, min(within, EXECUTION_WARMUP_S)))
    except httpx.HTTPError:
        pass


class AirflowClient:
    """The Airflow REST API v2 at `url` as `user`; `password` is called once, at the first request.

    `warn` receives a warning meant for the user (a password about to cross the network in clear).
    """

    def __init__(
        self,
        url: str,
        user: str,
        password: Callable[[], str],
        *,
        home: Path | str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        retry_for: float = RETRY_FOR_S,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.user = user
        self.timeout = timeout
        self.retry_for = retry_for
        cache = TokenCache(Path(home) / TOKEN_FILE if home else None)
        self.http = httpx.Client(
            base_url=f"{self.url}/api/v2",
            auth=TokenAuth(self.url, user, password, cache, warn=warn),
            transport=transport,
            verify=not self.url.startswith("http://"),  # no TLS: skip building an SSL context (~50 ms CPU)
            timeout=httpx.Timeout(timeout, connect=5.0),
            headers={"Accept": "application/json"},
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> AirflowClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- the one place errors are mapped -------------------------------------------------

    def _call(
        self, method: str, path: str, *, what: str | None = None, parse: Callable[[dict], Any] | None = None, **kwargs
    ) -> Any:
        """Send, retry connection failures for a bounded time, map failures, return the JSON object
        (through `parse` when given: an object of the wrong shape is an ApiError too)."""
        response, _ = self._send(method, path, **kwargs)
        return self._parsed(response, method, path, what, parse)

    def _parsed(
        self, response: httpx.Response, method: str, path: str, what: str | None, parse: Callable[[dict], Any] | None
    ) -> Any:
        body = self._check(response, method, path, what)
        if parse is None:
            return body
        try:
            return parse(body)
        except (LookupError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
            raise ApiError(f"{_answer(response)} with JSON mlwf cannot read ({_flaw(exc)})") from None

    def _send(self, method: str, path: str, *, resend: bool = False, **kwargs) -> tuple[httpx.Response, int]:
        """The response and how many attempts it took; transport failures become mlwf errors.

        Connection failures are always retried (nothing reached the server), as is a 503 (the
        server did not do it, e.g. SQLite "database is locked"). Idempotent methods are also
        resent after a broken connection. `resend=True` marks a POST the caller made idempotent
        (a client-chosen id): it is resent after a read timeout or any 5xx, at least once.
        """
        import tenacity

        retryable: tuple[type[Exception], ...] = (httpx.ConnectError, httpx.ConnectTimeout)
        if resend or method in ("GET", "PUT", "PATCH", "DELETE"):
            retryable += (httpx.ReadError, httpx.RemoteProtocolError)
        if resend:
            retryable += (httpx.ReadTimeout, httpx.WriteError, httpx.WriteTimeout)
        stop = tenacity.stop_after_delay(self.retry_for)
        if resend:  # a read timeout alone can outlast the retry budget
            stop = stop & tenacity.stop_after_attempt(2)
        def server_did_not_do_it(response: httpx.Response) -> bool:
            return response.status_code == 503 or (resend and response.status_code >= 500)

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(retryable) | tenacity.retry_if_result(server_did_not_do_it),
            stop=stop,
            wait=tenacity.wait_exponential(multiplier=0.25, max=2.0),
            retry_error_callback=lambda state: state.outcome.result(),
            reraise=True,
        )
        try:
            response = retrying(self.http.request, method, path, **kwargs)
            return response, retrying.statistics.get("attempt_number", 1)
        except MlwfError:
            raise
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout):
                raise self._unreachable("connection timed out") from None
            raise TimeoutExpired(
                f"Airflow at {self.url} did not answer {method} {path} within {self.timeout:g} s"
            ) from None
        except httpx.ConnectError as exc:
            raise self._unreachable(_reason(exc)) from None
        except httpx.TransportError as exc:
            raise self._unreachable(_reason(exc)) from None
        except httpx.InvalidURL as exc:
            raise UsageError(f"cannot send {method} {path} to {self.url}: {exc}") from None
        except httpx.HTTPError as exc:  # e.g. a body that does not decode as its Content-Encoding says
            raise ApiError(f"Airflow at {self.url} answered {method} {path} unreadably: {_reason(exc)}") from None

    def _unreachable(self, reason: str) -> UnreachableError:
        return UnreachableError(
            f"cannot reach Airflow at {self.url} ({reason}; retried for {self.retry_for:g} s)",
            hint="is the stack up? `mlwf status`, `mlwf up`, or point --url / MLWF_AIRFLOW_URL at a running server",
        )

    def _check(self, response: httpx.Response, method: str, path: str, what: str | None) -> Any:
        status = response.status_code
        if 300 <= status < 400:
            target = response.headers.get("location")
            raise ApiError(
                f"{_answer(response)}: a redirect{f' to {target}' if target else ''}, not an API answer",
                hint="point --url / MLWF_AIRFLOW_URL at the Airflow API server itself (mlwf follows no redirects)",
            )
        if status < 300:
            if status == 204:
                return {}
            try:
                body = response.json()
            except ValueError:
                kind = response.headers.get("content-type", "").split(";")[0].strip() or "untyped"
                raise ApiError(
                    f"{_answer(response)} and " + (f"a {kind} body that is not JSON" if response.content else "no body"),
                    hint="is --url / MLWF_AIRFLOW_URL an Airflow 3 API server?",
                ) from None
            if not isinstance(body, dict):
                raise ApiError(f"{_answer(response)} and a JSON {type(body).__name__} where an object was expected")
            return body
        detail = _detail(response)
        if status == 401:
            raise AuthError(
                f"Airflow at {self.url} rejected the credentials of user '{self.user}'",
                hint="set MLWF_AIRFLOW_PASSWORD, or for a stack mlwf started check `mlwf config`",
            )
        if status == 403:
            raise AuthError(f"user '{self.user}' is not allowed to {method} {path}: {detail}")
        if status == 404:
            raise NotFoundError(f"{what} not found" if what else f"{method} {path}: not found ({detail})")
        if status in (400, 422):
            raise UsageError(f"Airflow refused the request: {detail}")
        if status == 409:
            raise ApiError(f"conflict: {detail}")
        raise ApiError(f"Airflow answered HTTP {status} to {method} {path}: {detail}")

    def _pages(
        self, path: str, key: str, parse: Callable[[dict], Any], *, what: str | None = None, params: dict | None = None
    ) -> list:
        """Every item of a paged list, each through `parse`."""

        def page(data: dict) -> tuple[list, int]:
            batch = data.get(key) or []
            if not isinstance(batch, list):
                raise TypeError(f"{key!r} is not a list")
            return [parse(item) for item in batch], int(data.get("total_entries") or 0)

        items: list = []
        while True:
            batch, total = self._call(
                "GET", path, what=what, parse=page, params={**(params or {}), "limit": PAGE, "offset": len(items)}
            )
            items.extend(batch)
            if not batch or len(items) >= total:
                return items

    # -- DAGs ----------------------------------------------------------------------------

    def list_dags(self) -> list[Dag]:
        return self._pages("/dags", "dags", Dag.from_api, params={"order_by": "dag_id"})

    def get_dag(self, dag_id: str) -> Dag:
        return self._call("GET", f"/dags/{_q(dag_id)}", what=f"DAG '{dag_id}'", parse=Dag.from_api)

    def set_paused(self, dag_id: str, paused: bool) -> Dag:
        return self._call(
            "PATCH", f"/dags/{_q(dag_id)}", what=f"DAG '{dag_id}'", parse=Dag.from_api, json={"is_paused": paused}
        )

    def import_errors(self) -> list[DagImportError]:
        return self._pages("/importErrors", "import_errors", DagImportError.from_api)

    # -- runs ----------------------------------------------------------------------------

    def trigger_run(self, dag_id: str, conf: dict | None = None, *, run_id: str | None = None) -> DagRun:
        """One run, however often the POST is resent: the run id is chosen here, so a resend
        that finds it taken (409) means an earlier attempt created it."""
        run_id = run_id or new_run_id()
        path = f"/dags/{_q(dag_id)}/dagRuns"
        body = {"dag_run_id": run_id, "logical_date": None, "conf": conf or {}}
        response, attempts = self._send("POST", path, resend=True, json=body)
        if response.status_code == 409 and attempts > 1:
            try:
                return self.get_run(dag_id, run_id)
            except NotFoundError:
                pass  # the conflict was about something else: report it as it is
        return self._parsed(response, "POST", path, f"DAG '{dag_id}'", DagRun.from_api)

    def get_run(self, dag_id: str, run_id: str) -> DagRun:
        return self._call(
            "GET", f"/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}", what=f"run '{run_id}' of DAG '{dag_id}'",
            parse=DagRun.from_api,
        )

    def list_runs(
        self,
        dag_id: str,
        *,
        limit: int = 10,
        order_by: str = "-id",
        run_type: str | None = None,
        logical_date_gte: datetime | None = None,
        logical_date_lte: datetime | None = None,
    ) -> list[DagRun]:
        params: dict[str, Any] = {"limit": limit, "order_by": order_by}
        if run_type:
            params["run_type"] = run_type
        if logical_date_gte:
            params["logical_date_gte"] = logical_date_gte.isoformat()
        if logical_date_lte:
            params["logical_date_lte"] = logical_date_lte.isoformat()
        return self._call(
            "GET", f"/dags/{_q(dag_id)}/dagRuns", what=f"DAG '{dag_id}'", params=params,
            parse=lambda data: [DagRun.from_api(r) for r in _listed(data, "dag_runs")],
        )

    def task_instances(self, dag_id: str, run_id: str) -> list[TaskInstance]:
        return self._pages(
            f"/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances",
            "task_instances",
            TaskInstance.from_api,
            what=f"run '{run_id}' of DAG '{dag_id}'",
        )

    def dag_tasks(self, dag_id: str) -> list[Task]:
        """The DAG's tasks with their downstream ids (one page: the endpoint lists them all)."""
        return self._call(
            "GET",
            f"/dags/{_q(dag_id)}/tasks",
            what=f"DAG '{dag_id}'",
            parse=lambda data: [Task.from_api(t) for t in _listed(data, "tasks")],
        )

    def task_log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int, *, map_index: int = -1
    ) -> list[LogRecord]:
        return self._call(
            "GET",
            f"/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances/{_q(task_id)}/logs/{try_number}",
            what=f"log of task '{task_id}' (try {try_number}) in run '{run_id}' of DAG '{dag_id}'",
            params={"full_content": "true", "map_index": map_index},
            parse=lambda data: [LogRecord.from_api(item) for item in _listed(data, "content")],
        )

    # -- backfills -----------------------------------------------------------------------

    @staticmethod
    def _backfill_body(dag_id, from_date, to_date, reprocess, max_active_runs) -> dict:
        return {
            "dag_id": dag_id,
            "from_date": from_date.isoformat(),
            "to_date": to_date.isoformat(),
            "reprocess_behavior": reprocess,
            "max_active_runs": max_active_runs,
        }

    def backfill_dry_run(
        self, dag_id: str, from_date: datetime, to_date: datetime, *, reprocess: str = "none", max_active_runs: int = 2
    ) -> list[datetime]:
        return self._call(
            "POST",
            "/backfills/dry_run",
            what=f"DAG '{dag_id}'",
            json=self._backfill_body(dag_id, from_date, to_date, reprocess, max_active_runs),
            parse=lambda data: [
                parse_time(b["logical_date"]) for b in _listed(data, "backfills") if b.get("logical_date")
            ],
        )

    def create_backfill(
        self, dag_id: str, from_date: datetime, to_date: datetime, *, reprocess: str = "none", max_active_runs: int = 2
    ) -> Backfill:
        return self._call(
            "POST",
            "/backfills",
            what=f"DAG '{dag_id}'",
            json=self._backfill_body(dag_id, from_date, to_date, reprocess, max_active_runs),
            parse=Backfill.from_api,
        )

    def get_backfill(self, backfill_id: int) -> Backfill:
        return self._call("GET", f"/backfills/{backfill_id}", what=f"backfill {backfill_id}", parse=Backfill.from_api)

    # -- pools -----------------------------------------------------------------------------

    def ensure_pool(self, name: str, slots: int, description: str = "") -> bool:
        """Create a pool unless one of that name exists (its slots, perhaps the user's, are kept);
        True when this call created it. Safe to resend: a second POST finds it (409)."""
        body = {"name": name, "slots": slots, "description": description, "include_deferred": False}
        response, _ = self._send("POST", "/pools", resend=True, json=body)
        if response.status_code == 409:
            return False
        self._parsed(response, "POST", "/pools", f"pool '{name}'", None)
        return True

    def pools(self) -> list[Pool]:
        return self._pages("/pools", "pools", Pool.from_api, params={"order_by": "name"})

    # -- connections, variables, pools as objects (`mlflowctl.objects`) --------------------
    # `create_*` POSTs; `update_*` PATCHes only `fields` of the body (Airflow's update_mask),
    # so every other field keeps the server's value (default_pool allows only slots).

    def connections(self) -> list[Connection]:
        return self._pages("/connections", "connections", Connection.from_api, params={"order_by": "connection_id"})

    def variables(self) -> list[Variable]:
        return self._pages("/variables", "variables", Variable.from_api, params={"order_by": "key"})

    def create_connection(self, body: dict) -> None:
        self._call("POST", "/connections", what=f"connection '{body['connection_id']}'", json=body)

    def update_connection(self, body: dict, fields: list[str]) -> None:
        self._patch(f"/connections/{_q(body['connection_id'])}", body, fields, f"connection '{body['connection_id']}'")

    def create_variable(self, body: dict) -> None:
        self._call("POST", "/variables", what=f"variable '{body['key']}'", json=body)

    def update_variable(self, body: dict, fields: list[str]) -> None:
        self._patch(f"/variables/{_q(body['key'])}", body, fields, f"variable '{body['key']}'")

    def create_pool(self, body: dict) -> None:
        self._call("POST", "/pools", what=f"pool '{body['name']}'", json=body)

    def update_pool(self, body: dict, fields: list[str]) -> None:
        self._patch(f"/pools/{_q(body['name'])}", body, fields, f"pool '{body['name']}'")

    def _patch(self, path: str, body: dict, fields: list[str], what: str) -> None:
        self._call("PATCH", path, what=what, json=body, params={"update_mask": fields})

    # -- monitoring (`mlwf health`) ------------------------------------------------------

    def health(self) -> dict:
        """`/api/v2/monitor/health`: metadatabase, scheduler, triggerer, dag_processor."""
        return self._call("GET", "/monitor/health", parse=_components)

    def runs_since(self, since: datetime | None = None, *, state: str | None = None) -> list[DagRun]:
        """Runs of every DAG started since `since` (all if None), newest first; optionally one state."""
        params: dict[str, Any] = {"order_by": "-start_date"}
        if since is not None:
            params["start_date_gte"] = since.isoformat()
        if state:
            params["state"] = state
        return self._pages("/dags/~/dagRuns", "dag_runs", DagRun.from_api, params=params)

    def failed_tasks_since(self, since: datetime) -> list[TaskFailure]:
        """Task instances of every DAG that failed and started since `since`, newest first."""
        return self._pages(
            "/dags/~/dagRuns/~/taskInstances",
            "task_instances",
            TaskFailure.from_api,
            params={"state": "failed", "start_date_gte": since.isoformat(), "order_by": "-start_date"},
        )


def _listed(data: dict, key: str) -> list:
    items = data.get(key) or []
    if not isinstance(items, list):
        raise TypeError(f"{key!r} is not a list")
    return items


def _components(data: dict) -> dict:
    """`/monitor/health`: each component's entry is an object (or absent)."""
    for name, part in data.items():
        if part is not None and not isinstance(part, dict):
            raise TypeError(f"{name!r} is not an object")
    return data


def _answer(response: httpx.Response) -> str:
    """The start of every message about an answer: the request, its URL and the status."""
    request = response.request
    return f"Airflow answered {request.method} {request.url.copy_with(query=None)} with HTTP {response.status_code}"


def _flaw(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"no {exc.args[0]!r}" if exc.args else "a missing field"
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if "refused" in text.lower():
        return "connection refused"
    return text.splitlines()[0][:200]
