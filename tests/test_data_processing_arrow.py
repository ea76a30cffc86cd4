"""The data stages work on Arrow columns, not pandas frames: the same results as the frame
computations and scikit-learn's estimators they replace."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from mlpipeline.download import download_data
from mlpipeline.parallel import ahead, cores, each
from mlpipeline.validation import _count_duplicates
from mlpipeline.features import feature_engineering
from mlpipeline.preprocessing import _mean_and_scale, preprocess_data
from mlpipeline.storage import LABEL, float_column
from mlpipeline.synthetic import SYNTHETIC_CHUNK_ROWS


def test_mean_and_scale_are_standard_scalers() -> None:
    rng = np.random.default_rng(3)
    x = np.asfortranarray(rng.normal(size=(5000, 5)) * [1, 1e-6, 1e6, 1, 1] + [0, 1e6, -3, 0, 0])
    x[:, 3] = 7.25  # constant: scale 1
    x[:, 4] = 1e9 + rng.integers(0, 2, size=5000) * 1e-7  # constant within rounding, by scikit-learn's rule
    expected = StandardScaler().fit(x)
    mean, scale = np.array([_mean_and_scale(x[:, j]) for j in range(x.shape[1])]).T
    np.testing.assert_allclose(mean, expected.mean_, rtol=1e-13)
    np.testing.assert_allclose(scale, expected.scale_, rtol=1e-10)
    assert scale[3] == expected.scale_[3] == 1.0 and scale[4] == expected.scale_[4] == 1.0


def test_float_column_reads_like_a_frame(tmp_path: Path) -> None:
    table = pa.table({
        "chunked": pa.chunked_array([[1.5, None], [3.0]]),
        "ints": pa.array([1, None, 3]),
        "small": pa.array([0.1, 0.2, 0.3], pa.float32()),
    })
    frame = table.to_pandas()
    for name in table.column_names:
        np.testing.assert_array_equal(float_column(table, name), frame[name].to_numpy(dtype=np.float64))
    assert float_column(table, "small", np.float32).dtype == np.float32


def test_preprocess_matches_the_frame_computation(tmp_path: Path) -> None:
    """Integer and float features with nulls: imputed with train medians and scaled as
    StandardScaler would, label type kept."""
    rng = np.random.default_rng(5)
    df = pd.DataFrame({
        "a": rng.normal(size=400) * 3 + 1,
        "b": pd.array(rng.integers(0, 50, size=400), dtype="Int64"),
        "c": rng.normal(size=400).astype(np.float32),
        LABEL: np.where(rng.random(400) < 0.4, "yes", "no"),
    })
    df.loc[::7, "a"] = np.nan
    df.loc[::11, "b"] = pd.NA
    df.to_parquet(tmp_path / "raw.parquet", index=False)
    result = preprocess_data(tmp_path / "raw.parquet", tmp_path / "out", dtype="float64", seed=3)
    train = pd.read_parquet(result["train_path"])
    features = ["a", "b", "c"]
    x = df[features].to_numpy(dtype=np.float64, na_value=np.nan)
    from sklearn.model_selection import train_test_split

    train_idx, _ = train_test_split(np.arange(400), test_size=0.2, random_state=3, stratify=df[LABEL])
    raw_train = x[train_idx]
    medians = np.nanmedian(raw_train, axis=0)
    filled = np.where(np.isnan(raw_train), medians, raw_train)
    np.testing.assert_allclose(train[features].to_numpy(), StandardScaler().fit_transform(filled), atol=1e-12)
    assert list(train[LABEL]) == list(df[LABEL].to_numpy()[train_idx])


def test_preprocess_still_refuses_infinite_values(tmp_path: Path) -> None:
    df = pd.DataFrame({"a": np.r_[np.inf, np.arange(59.0)], "b": np.arange(60.0), LABEL: np.arange(60) % 2})
    df.to_parquet(tmp_path / "raw.parquet", index=False)
    with pytest.raises(ValueError, match="infinity"):
        preprocess_data(tmp_path / "raw.parquet", tmp_path / "out")
    assert not (tmp_path / "out" / "train.parquet").exists()


def test_feature_engineering_writes_its_input_columns_unchanged(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    train = pd.DataFrame({"x0": rng.normal(size=300), "x1": rng.integers(0, 9, size=300), LABEL: np.arange(300) % 3})
    train.to_parquet(tmp_path / "t.parquet", index=False)
    result = feature_engineering(tmp_path / "t.parquet", tmp_path / "t.parquet", tmp_path / "out", top_k=2)
    out = pd.read_parquet(result["train_path"])
    pd.testing.assert_frame_equal(out[["x0", "x1", LABEL]], train)
    np.testing.assert_allclose(out["row_std"], train[["x0", "x1"]].to_numpy(dtype=float).std(axis=1))


def test_synthetic_bytes_do_not_depend_on_the_blas_thread_count(tmp_path: Path) -> None:
    """A chunk's matrix products are large enough for a multi-threaded BLAS to split them; the
    generator pins them to one thread, so any machine gives the same bytes for a spec."""
    spec = f"synthetic:rows={SYNTHETIC_CHUNK_ROWS},features=20,seed=2"
    with threadpool_limits(limits=2, user_api="blas"):
        two = download_data(spec, tmp_path / "two")
    with threadpool_limits(limits=1, user_api="blas"):
        one = download_data(spec, tmp_path / "one")
    assert two["fingerprint"] == one["fingerprint"]


STAGES_SCRIPT = """
import hashlib, json, os, sys
from pathlib import Path
if sys.argv[2] == "one":
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
from mlpipeline.download import download_data
from mlpipeline.features import feature_engineering
from mlpipeline.preprocessing import preprocess_data
from mlpipeline.validation import validate_data
out = Path(sys.argv[1])
raw = download_data(sys.argv[3], out)["path"]
validate_data(raw, out)
split = preprocess_data(raw, out)
feature_engineering(split["train_path"], split["holdout_path"], out)
print(json.dumps({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir()) if p.is_file()}))
"""


@pytest.mark.skipif(cores() < 2, reason="needs two cores to compare against one")
def test_the_data_stages_write_the_same_bytes_on_one_core_and_on_every_core(tmp_path: Path) -> None:
    """Chunks, columns and splits are worked on every core at once (mlpipeline.parallel); what
    is written must not depend on how many there are."""
    spec = f"synthetic:rows={2 * SYNTHETIC_CHUNK_ROWS + 777},features=8,seed=4"

    def outputs(cores: str) -> dict[str, str]:
        (tmp_path / cores).mkdir()  # "out" in each: the reports name their input's path
        done = subprocess.run([sys.executable, "-c", STAGES_SCRIPT, "out", cores, spec], cwd=tmp_path / cores,
                              capture_output=True, text=True, timeout=300, check=True)
        return json.loads(done.stdout.splitlines()[-1])

    one, every = outputs("one"), outputs("every")
    assert {"raw.parquet", "train.parquet", "holdout.parquet", "train_features.parquet",
            "holdout_features.parquet", "preprocessing.json", "validation.json"} <= set(one)
    assert one == every


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.tuples(st.sampled_from([0.0, -0.0, 1.5, np.nan]), st.sampled_from([None, 1, 2]),
                            st.sampled_from(["a", "b"])), min_size=0, max_size=40),
)
def test_duplicates_are_counted_as_pandas_counts_them(rows) -> None:
    """Floats with NaN and signed zeros, nullable integers, strings: the hashed count is
    DataFrame.duplicated's, whatever the hashes collide on."""
    df = pd.DataFrame(rows, columns=["f", "i", LABEL]).astype({"f": "float64", "i": "Int64"})
    assert _count_duplicates(df) == int(df.duplicated().sum())


def test_work_ahead_keeps_order_and_stays_within_one_item_per_core() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def work(item: int) -> int:
        with lock:
            started.append(item)
        time.sleep(0.01 * (item % 3))  # later items often finish first
        return item * item

    seen = []
    for index, result in enumerate(ahead(work, range(12))):
        with lock:
            assert len(started) <= index + 1 + cores()  # never more than one item per core ahead
        seen.append(result)
    assert seen == [i * i for i in range(12)]
    assert each(lambda i: -i, range(5)) == [0, -1, -2, -3, -4]
    with pytest.raises(ZeroDivisionError):
        each(lambda i: 1 / i, [1, 0, 2])
