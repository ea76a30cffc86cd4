"""One trigger, one run, against the session's real Airflow.

The client's transport forwards every request to the real stack, but the answer to the first
POST dagRuns is lost after the server got it (replaced by a 5xx, or a read timeout), as a
flaky proxy or an overloaded server would do. The client resends the same request with the
same client-chosen run id; Airflow answers the resend with a real 409, which the client takes
to mean "created". The server must hold exactly one new run.
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote

import httpx
import pytest

from mlflowctl.api.airflow import AirflowClient

pytestmark = [pytest.mark.stack, pytest.mark.slow]

DAG = "monitoring_dag"  # runs only stay queued: the DAG is kept paused during these tests


class LoseFirstAnswer(httpx.BaseTransport):
    """Forwards to the real server; the first POST dagRuns is answered with `failure` instead
    (after the server got it, unless `forward` is False: then it never reaches the server)."""

    def __init__(self, failure: int | Exception, *, forward: bool = True) -> None:
        self.real = httpx.HTTPTransport()
        self.failure, self.forward = failure, forward
        self.posts: list[tuple[dict, int | None]] = []  # (body, the real server's status)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        is_trigger = request.method == "POST" and request.url.path.endswith("/dagRuns")
        if is_trigger and not self.posts and not self.forward:
            self.posts.append((json.loads(request.content), None))
            return httpx.Response(self.failure, text="lost before the server")
        response = self.real.handle_request(request)
        if not is_trigger:
            return response
        response.read()
        self.posts.append((json.loads(request.content), response.status_code))
        if len(self.posts) > 1:
            return response
        response.close()
        if isinstance(self.failure, Exception):
            raise self.failure
        return httpx.Response(self.failure, text="lost on the way back")

    def close(self) -> None:
        self.real.close()


@pytest.fixture
def server(stack):
    """An httpx client of the stack's own (independent of mlwf); keeps DAG paused, deletes the runs
    the test created."""
    with httpx.Client(base_url=f"{stack.url}/api/v2", headers={"Authorization": f"Bearer {stack.token()}"}, timeout=30) as client:
        was_paused = client.get(f"/dags/{DAG}").raise_for_status().json()["is_paused"]
        client.patch(f"/dags/{DAG}", json={"is_paused": True}).raise_for_status()
        before = run_ids(client)
        try:
            yield client
        finally:
            for run_id in run_ids(client) - before:
                client.delete(f"/dags/{DAG}/dagRuns/{quote(run_id, safe='')}")
            client.patch(f"/dags/{DAG}", json={"is_paused": was_paused})


def run_ids(client: httpx.Client) -> set[str]:
    data = client.get(f"/dags/{DAG}/dagRuns", params={"limit": 1000}).raise_for_status().json()
    assert data["total_entries"] < 1000
    return {run["dag_run_id"] for run in data["dag_runs"]}


@pytest.mark.parametrize(
    "failure",
    [500, 502, 504, httpx.ReadTimeout("timed out"), httpx.RemoteProtocolError("Server disconnected")],
    ids=["500", "502", "504", "read-timeout", "disconnect"],
)
def test_a_trigger_resent_after_a_lost_answer_creates_exactly_one_run(stack, server, failure):
    before = run_ids(server)
    transport = LoseFirstAnswer(failure)
    with AirflowClient(stack.url, stack.user, lambda: stack.password, transport=transport, retry_for=5) as client:
        run = client.trigger_run(DAG, {"case": str(failure)})

    assert run_ids(server) - before == {run.run_id}
    (first, created), (resent, conflict) = transport.posts
    assert created in (200, 201) and conflict == 409  # Airflow itself refused the duplicate
    assert first == resent and first["dag_run_id"] == run.run_id
    assert re.fullmatch(r"manual__\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00__[0-9a-f]{8}", run.run_id)
    held = server.get(f"/dags/{DAG}/dagRuns/{quote(run.run_id, safe='')}").raise_for_status().json()
    assert held["run_type"] == "manual" and held["conf"] == {"case": str(failure)}
    assert (run.state, run.conf) == (held["state"], held["conf"])


def test_a_trigger_lost_before_the_server_is_resent_and_created_once(stack, server):
    before = run_ids(server)
    transport = LoseFirstAnswer(503, forward=False)
    with AirflowClient(stack.url, stack.user, lambda: stack.password, transport=transport, retry_for=5) as client:
        run = client.trigger_run(DAG)
    assert run_ids(server) - before == {run.run_id}
    assert [status for _, status in transport.posts] == [None, 200]


def test_two_triggers_make_two_runs(stack, server):
    """The run id is per trigger, not per second or per DAG: a second trigger is a second run."""
    before = run_ids(server)
    with AirflowClient(stack.url, stack.user, lambda: stack.password) as client:
        first, second = client.trigger_run(DAG), client.trigger_run(DAG)
    assert first.run_id != second.run_id
    assert run_ids(server) - before == {first.run_id, second.run_id}
