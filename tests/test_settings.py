"""Pipeline settings from the environment."""

from __future__ import annotations

import os

import pytest

from mlpipeline.settings import PipelineSettings, SettingsError, parse_thresholds, safe_run_id
from mlpipeline.thresholds import PROMOTION_MINIMUMS


def test_defaults_under_cwd(tmp_path):
    s = PipelineSettings.from_env({}, cwd=tmp_path)
    assert s.data_root == tmp_path / ".mlwf" / "data"
    assert s.registry_dir == s.data_root / "registry"
    assert s.notifications_log == s.data_root / "notifications.jsonl"
    assert s.webhook_url is None and s.thresholds == PROMOTION_MINIMUMS and s.tolerance == 0.02
    assert s.project_root is None and s.data_dirs == (s.data_root,)
    assert s.download_max_bytes == 200 * 1024 * 1024 and s.download_timeout == 300.0


def test_input_limits_from_env(tmp_path):
    env = {
        "MLWF_DATA_ROOT": str(tmp_path / "d"), "MLWF_PROJECT_ROOT": str(tmp_path / "p"),
        "MLWF_ALLOWED_DATA_DIRS": f"{tmp_path / 'a'}{os.pathsep}{os.pathsep}{tmp_path / 'b'}",
        "MLWF_DOWNLOAD_MAX_BYTES": "1_000", "MLWF_DOWNLOAD_TIMEOUT": "2.5",
    }
    s = PipelineSettings.from_env(env)
    assert s.data_dirs == (tmp_path / "d", tmp_path / "p", tmp_path / "a", tmp_path / "b")
    assert s.download_max_bytes == 1000 and s.download_timeout == 2.5


def test_env_overrides(tmp_path):
    env = {
        "MLWF_DATA_ROOT": str(tmp_path / "d"),
        "MLWF_REGISTRY_DIR": str(tmp_path / "reg"),
        "MLWF_WEBHOOK_URL": " http://h/x ",
        "MLWF_THRESHOLDS": '{"accuracy": 0.9}',
        "MLWF_PROMOTION_TOLERANCE": "0.05",
        "MLWF_DEADLINE_MINUTES": "5",
    }
    s = PipelineSettings.from_env(env)
    assert s.registry_dir == tmp_path / "reg" and s.webhook_url == "http://h/x"
    assert s.thresholds == {"accuracy": 0.9} and s.tolerance == 0.05 and s.deadline_minutes == 5
    assert s.run_dir("scheduled__2026-01-01T02:00:00+00:00", "train").parent.parent == tmp_path / "d" / "runs"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MLWF_THRESHOLDS": "{nope"}, "not valid JSON"),
        ({"MLWF_THRESHOLDS": "[1]"}, "JSON object"),
        ({"MLWF_THRESHOLDS": '{"f1": 2}'}, "between 0 and 1"),
        ({"MLWF_THRESHOLDS": '{"f1": "high"}'}, "must be a number"),
        ({"MLWF_PROMOTION_TOLERANCE": "-1"}, ">= 0"),
        ({"MLWF_DEADLINE_MINUTES": "soon"}, "must be a number"),
        ({"MLWF_DOWNLOAD_MAX_BYTES": "lots"}, "MLWF_DOWNLOAD_MAX_BYTES must be a whole number > 0, got 'lots'"),
        ({"MLWF_DOWNLOAD_MAX_BYTES": "1e9"}, "MLWF_DOWNLOAD_MAX_BYTES must be a whole number"),
        ({"MLWF_DOWNLOAD_MAX_BYTES": "0"}, "MLWF_DOWNLOAD_MAX_BYTES must be a finite number > 0"),
        ({"MLWF_DOWNLOAD_TIMEOUT": "-5"}, "MLWF_DOWNLOAD_TIMEOUT must be a finite number > 0"),
        ({"MLWF_DOWNLOAD_TIMEOUT": "inf"}, "MLWF_DOWNLOAD_TIMEOUT must be a finite number > 0"),
        ({"MLWF_DOWNLOAD_TIMEOUT": "nan"}, "MLWF_DOWNLOAD_TIMEOUT must be a finite number > 0"),
        ({"MLWF_ALLOWED_DATA_DIRS": "data"}, "MLWF_ALLOWED_DATA_DIRS entries must be absolute paths, got 'data'"),
    ],
)
def test_bad_env_is_a_clear_error(env, message):
    with pytest.raises(SettingsError, match=message):
        PipelineSettings.from_env(env)


def test_safe_run_id_is_a_distinct_plain_directory_name():
    a = safe_run_id("manual__2026-01-01T00:00:00+00:00")
    b = safe_run_id("manual__2026-01-01T00_00_00_00_00")
    assert "/" not in a and ":" not in a and "+" not in a and a != b
    assert safe_run_id("plain_id-1.2") == "plain_id-1.2"
    assert not safe_run_id("../etc").startswith(".")
    with pytest.raises(SettingsError):
        safe_run_id("  ")


def test_parse_thresholds_mapping():
    assert parse_thresholds({"roc_auc": 1}) == {"roc_auc": 1.0}
    assert parse_thresholds(None) == PROMOTION_MINIMUMS
