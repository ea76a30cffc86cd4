"""Which password mlwf sends where (mlflowctl.credentials), as pure functions.

The same rules through the real CLI against the real stack and a recording server are in
test_credentials_e2e.py.
"""

from __future__ import annotations

import pytest

from mlflowctl import secrets
from mlflowctl.config import load_config
from mlflowctl.credentials import is_local_stack_url, known_password, no_password, plain_http_warning, resolve_password
from mlflowctl.errors import AuthError


@pytest.mark.parametrize(
    "url, own",
    [
        ("http://127.0.0.1:8080", True),
        ("http://127.0.0.1:8080/", True),
        ("http://localhost:8080", True),
        ("HTTP://LocalHost:8080", True),
        ("http://[::1]:8080", True),
        ("http://127.0.0.2:8080", True),  # all of 127/8 is this host
        ("http://127.0.0.1:8081", False),  # another server on this host
        ("http://127.0.0.1", False),
        ("https://127.0.0.1:8080", False),
        ("http://10.0.0.5:8080", False),
        ("http://airflow.example.com:8080", False),
        ("http://127.0.0.1:8080@airflow.example.com", False),  # userinfo, the host is the other one
        ("http://127.0.0.1.example.com:8080", False),
        ("http://127.0.0.1:port", False),
        ("http://[::1", False),
        ("127.0.0.1:8080", False),
    ],
)
def test_only_the_local_stacks_own_url_is_its_own(url, own):
    assert is_local_stack_url(url, 8080) is own


def test_the_default_port_counts():
    assert is_local_stack_url("http://localhost", 80)
    assert not is_local_stack_url("http://localhost", 8080)


@pytest.mark.parametrize(
    "url",
    ["http://10.0.0.5:8080", "http://airflow.example.com", "http://[2001:db8::1]:8080", "http://0.0.0.0:8080"],
)
def test_plain_http_to_another_host_warns(url):
    warning = plain_http_warning(url)
    assert warning is not None and "plain HTTP" in warning and "https" in warning


@pytest.mark.parametrize(
    "url",
    ["https://airflow.example.com", "http://127.0.0.1:8080", "http://localhost:9", "http://[::1]:8080", "http://127.9.9.9"],
)
def test_loopback_or_https_does_not_warn(url):
    assert plain_http_warning(url) is None


@pytest.fixture
def project(tmp_path):
    """A directory with no project file: the defaults, home in tmp_path/.mlwf with a stack's secrets."""
    stored = secrets.load_or_create(tmp_path / ".mlwf").admin_password
    return tmp_path, stored


def _config(tmp_path, **overrides):
    return load_config({"home": str(tmp_path / ".mlwf"), **overrides}, cwd=tmp_path, environ={})


def test_the_generated_password_goes_to_the_local_stack_only(project):
    tmp_path, stored = project
    assert known_password(_config(tmp_path), environ={}) == stored
    assert known_password(_config(tmp_path, airflow_url="http://localhost:8080/"), environ={}) == stored
    for elsewhere in ("http://127.0.0.1:9999", "http://10.0.0.5:8080", "https://127.0.0.1:8080"):
        assert known_password(_config(tmp_path, airflow_url=elsewhere), environ={}) is None
    assert known_password(_config(tmp_path, airflow_user="someone"), environ={}) is None


def test_the_environment_wins_everywhere(project):
    tmp_path, _ = project
    environ = {"MLWF_AIRFLOW_PASSWORD": "from-env"}
    assert known_password(_config(tmp_path), environ=environ) == "from-env"
    assert known_password(_config(tmp_path, airflow_url="http://10.0.0.5:8080"), environ=environ) == "from-env"
    assert known_password(_config(tmp_path, airflow_url="http://10.0.0.5:8080"), environ={"MLWF_AIRFLOW_PASSWORD": ""}) is None


def test_the_missing_password_error_says_why_the_stored_one_is_not_used(project):
    tmp_path, _ = project
    error = no_password(_config(tmp_path, airflow_url="http://10.0.0.5:8080"))
    assert error.exit_code == 3
    assert str(error) == "no password for Airflow user 'admin' at http://10.0.0.5:8080"
    assert error.hint.startswith("set MLWF_AIRFLOW_PASSWORD")
    assert "only to its own URL, http://127.0.0.1:8080" in error.hint
    assert "only to its own URL" not in no_password(_config(tmp_path)).hint
    (tmp_path / ".mlwf" / "secrets.json").unlink()  # no stack here: nothing to explain
    assert no_password(_config(tmp_path, airflow_url="http://10.0.0.5:8080")).hint == "set MLWF_AIRFLOW_PASSWORD"


def test_the_resolver_asks_only_when_no_password_is_known(project):
    tmp_path, stored = project
    prompts = []

    def ask(prompt):
        prompts.append(prompt)
        return "typed"

    assert resolve_password(_config(tmp_path), ask, environ={}) == stored
    assert prompts == []  # the stack's own password: nobody is asked
    elsewhere = _config(tmp_path, airflow_url="http://10.0.0.5:8080")
    assert resolve_password(elsewhere, ask, environ={}) == "typed"
    assert prompts == ["Airflow password for admin at http://10.0.0.5:8080"]
    for cannot_ask in (None, lambda prompt: None):  # no terminal, or the user gave up at the prompt
        with pytest.raises(AuthError, match="no password for Airflow user 'admin' at http://10.0.0.5:8080"):
            resolve_password(elsewhere, cannot_ask, environ={})
