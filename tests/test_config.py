"""Effective configuration: precedence, project discovery, bad values, secrets' file modes."""

import stat

import pytest

from mlflowctl import secrets
from mlflowctl.config import find_project_root, load_config
from mlflowctl.errors import UsageError


@pytest.fixture
def project(tmp_path):
    (tmp_path / "mlwf.toml").write_text('airflow_port = 8181\nparallelism = 2\nhome = "state"\n')
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    return tmp_path, nested


def test_flag_beats_env_beats_file_beats_default(project):
    root, nested = project
    config = load_config(
        {"airflow_port": 9001, "workers": None},
        cwd=nested,
        environ={"MLWF_AIRFLOW_PORT": "9000", "MLWF_PARALLELISM": "3"},
    )
    assert config.project_root == root.resolve()
    assert (config.airflow_port, config.sources["airflow_port"]) == (9001, "flag")
    assert (config.parallelism, config.sources["parallelism"]) == (3, "MLWF_PARALLELISM")
    assert config.workers == 2 and "workers" not in config.sources
    assert config.home == str((root / "state").resolve())
    assert config.api_url == "http://127.0.0.1:9001"


def test_project_found_through_pyproject_tool_table(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.mlwf]\nworkers = 3\n")
    (tmp_path / "sub").mkdir()
    assert find_project_root(tmp_path / "sub") == tmp_path.resolve()
    assert load_config(cwd=tmp_path / "sub", environ={}).workers == 3


def test_pyproject_without_mlwf_table_is_not_a_project(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.other]\n")
    assert find_project_root(tmp_path) != tmp_path.resolve()


@pytest.mark.parametrize(
    "environ, fragment",
    [
        ({"MLWF_AIRFLOW_PORT": "http"}, "MLWF_AIRFLOW_PORT"),
        ({"MLWF_AIRFLOW_PORT": "70000"}, "not a port"),
        ({"MLWF_BACKEND": "kubernetes"}, "auto, local, docker"),
        ({"MLWF_WORKERS": "0"}, "at least 1"),
        ({"MLWF_TASK_NICE": "20"}, "niceness from 0"),
        ({"MLWF_TASK_NICE": "-5"}, "MLWF_TASK_NICE"),
    ],
)
def test_bad_values_name_their_source(project, environ, fragment):
    with pytest.raises(UsageError, match=fragment):
        load_config(cwd=project[0], environ=environ)


def test_unknown_key_in_project_file_is_refused(tmp_path):
    (tmp_path / "mlwf.toml").write_text("airflow_prot = 1\n")
    with pytest.raises(UsageError, match="airflow_prot"):
        load_config(cwd=tmp_path, environ={})


def test_secrets_generated_once_and_private(tmp_path):
    first = secrets.load_or_create(tmp_path)
    second = secrets.load_or_create(tmp_path)
    assert first == second
    assert len(first.admin_password) >= 20 and first.admin_password != first.jwt_secret
    for name in (secrets.SECRETS_FILE, secrets.PASSWORDS_FILE):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert secrets.read_password(tmp_path) == first.admin_password
    assert secrets.read_password(tmp_path / "nowhere") is None


def test_task_preload_from_the_project_file_or_a_comma_separated_variable(tmp_path):
    (tmp_path / "mlwf.toml").write_text('task_preload = ["pandas", "sklearn.ensemble"]\n')
    assert load_config(cwd=tmp_path, environ={}).task_preload == ("pandas", "sklearn.ensemble")
    from_env = load_config(cwd=tmp_path, environ={"MLWF_TASK_PRELOAD": " numpy, scipy.special ,"})
    assert from_env.task_preload == ("numpy", "scipy.special")
    assert from_env.sources["task_preload"] == "MLWF_TASK_PRELOAD"
    with pytest.raises(UsageError, match="'numpy; rm' is not a module name"):
        load_config(cwd=tmp_path, environ={"MLWF_TASK_PRELOAD": "numpy; rm"})
