"""The data stages (download, validation, preprocessing, features) on real files (tmp_path) and a real
local HTTP server."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split

from mlpipeline.download import DEFAULT_SOURCE, download_data
from mlpipeline.features import feature_engineering
from mlpipeline.preprocessing import _fill, _median, preprocess_data
from mlpipeline.sources import DataError
from mlpipeline.storage import LABEL, OutputDirError
from mlpipeline.synthetic import SYNTHETIC_CHUNK_ROWS
from mlpipeline.validation import DataValidationError, _count_duplicates, validate_data


@pytest.fixture(autouse=True)
def data_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests read their files from tmp_path: allow it (tests/test_input_limits.py tests the refusals)."""
    monkeypatch.setenv("MLWF_ALLOWED_DATA_DIRS", str(tmp_path))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(directory: Path) -> list[str]:
    """Temporary files a crashed or failed write would leave behind."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


def frame(rows: int = 60, features: int = 3, seed: int = 0, classes: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = {f"x{i}": rng.normal(size=rows) for i in range(features)}
    data[LABEL] = np.arange(rows) % classes
    return pd.DataFrame(data)


def write(df: pd.DataFrame, path: Path) -> Path:
    df.to_parquet(path, index=False)
    return path


# --------------------------------------------------------------------------- HTTP server


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture
def http_dir(tmp_path: Path):
    """A real HTTP server on a free port serving a directory; yields (directory, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- download


@pytest.mark.parametrize(
    ("name", "rows", "classes"), [("breast_cancer", 569, 2), ("wine", 178, 3), ("iris", 150, 3), ("digits", 1797, 10)]
)
def test_download_sklearn_datasets(tmp_path: Path, name: str, rows: int, classes: int) -> None:
    result = download_data(f"sklearn:{name}", tmp_path)
    raw = tmp_path / "raw.parquet"
    assert result["path"] == str(raw)
    assert result["rows"] == rows
    assert result["source"] == f"sklearn:{name}"
    assert result["fingerprint"] == sha256_of(raw)
    df = pd.read_parquet(raw)
    assert list(df.columns) == result["columns"]
    assert df.columns[-1] == LABEL and df[LABEL].nunique() == classes
    assert leftovers(tmp_path) == []


def test_download_default_source_is_breast_cancer_and_rerun_is_identical(tmp_path: Path) -> None:
    first = download_data(out_dir=tmp_path / "a")
    again = download_data(DEFAULT_SOURCE, tmp_path / "a")
    other = download_data("sklearn:breast_cancer", tmp_path / "b")
    assert first["source"] == "sklearn:breast_cancer" and first["rows"] == 569
    assert first["fingerprint"] == again["fingerprint"] == other["fingerprint"]
    assert leftovers(tmp_path / "a") == []


def test_unknown_sklearn_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown sklearn dataset 'boston'.*breast_cancer"):
        download_data("sklearn:boston", tmp_path)
    assert not (tmp_path / "raw.parquet").exists()


def test_download_local_csv_and_parquet(tmp_path: Path) -> None:
    df = frame(rows=20)
    csv = tmp_path / "in.csv"
    df.to_csv(csv, index=False)
    from_csv = download_data(str(csv), tmp_path / "csv")
    pd.testing.assert_frame_equal(pd.read_parquet(from_csv["path"]), df)
    assert from_csv["columns"] == ["x0", "x1", "x2", LABEL]
    parquet = write(df, tmp_path / "in.parquet")
    from_parquet = download_data(parquet, tmp_path / "pq")  # a Path works as well as a string
    pd.testing.assert_frame_equal(pd.read_parquet(from_parquet["path"]), df)


def test_local_file_with_checksum(tmp_path: Path) -> None:
    csv = tmp_path / "in.csv"
    frame(rows=12).to_csv(csv, index=False)
    good = download_data(str(csv), tmp_path / "ok", sha256=sha256_of(csv).upper())
    assert good["source_sha256"] == sha256_of(csv)
    with pytest.raises(DataError, match="checksum mismatch"):
        download_data(str(csv), tmp_path / "bad", sha256="0" * 64)
    assert not (tmp_path / "bad" / "raw.parquet").exists()
    with pytest.raises(DataError, match="sha256 must be 64 hexadecimal digits"):
        download_data(str(csv), tmp_path / "bad", sha256="abc")
    assert "source_sha256" not in download_data(str(csv), tmp_path / "blank", sha256=" ")  # blank = none
    with pytest.raises(DataError, match="sha256 applies to URL and file sources"):
        download_data("sklearn:iris", tmp_path / "iris", sha256="0" * 64)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"a,b,target\n1,2,0\n3,4,1,5,6\n", "cannot read .*ParserError"),
        (b"\xff\xfe\x00\x81garbage\x00\x9c" * 40, "cannot read"),
        (b"", "cannot read .*EmptyDataError"),
    ],
    ids=["ragged-rows", "binary-garbage", "empty"],
)
def test_corrupt_csv(tmp_path: Path, content: bytes, message: str) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_bytes(content)
    with pytest.raises(DataError, match=message):
        download_data(str(bad), tmp_path / "out")
    assert not (tmp_path / "out" / "raw.parquet").exists()


def test_corrupt_parquet(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(DataError, match="cannot read"):
        download_data(str(bad), tmp_path / "out")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{tmp}/missing.csv", "does not exist"),
        ("/nonexistent/data.csv", "outside the folders data may be read from"),
        ("ftp://example.org/data.csv", "unsupported data source"),
        ("s3:bucket/key.csv", "unsupported data source"),
        ("", "empty data source"),
    ],
)
def test_bad_sources(tmp_path: Path, source: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        download_data(source.format(tmp=tmp_path), tmp_path)


def test_unsupported_file_type_and_directory(tmp_path: Path) -> None:
    text = tmp_path / "data.txt"
    text.write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type .txt"):
        download_data(str(text), tmp_path / "out")
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(DataError, match="not a file"):
        download_data(str(tmp_path / "dir.csv"), tmp_path / "out")


def test_synthetic_is_seeded_and_shaped(tmp_path: Path) -> None:
    spec = "synthetic:rows=500,features=6,seed=3"
    first = download_data(spec, tmp_path / "a")
    second = download_data(spec, tmp_path / "b")
    other = download_data("synthetic:rows=500,features=6,seed=4", tmp_path / "c")
    assert first["fingerprint"] == second["fingerprint"] != other["fingerprint"]
    assert first["synthetic"] == {"rows": 500, "features": 6, "seed": 3, "classes": 2}
    df = pd.read_parquet(first["path"])
    assert df.shape == (500, 7)
    assert list(df.columns) == [f"feature_{i:02d}" for i in range(6)] + [LABEL]
    assert set(df[LABEL]) == {0, 1}
    assert df.drop(columns=LABEL).dtypes.eq(np.float64).all() and np.isfinite(df.drop(columns=LABEL)).all().all()


def test_synthetic_multiclass(tmp_path: Path) -> None:
    result = download_data("synthetic:rows=300,features=8,seed=1,classes=4", tmp_path)
    assert set(pd.read_parquet(result["path"])[LABEL]) == {0, 1, 2, 3}


def test_synthetic_is_written_in_chunks_that_share_one_problem(tmp_path: Path) -> None:
    """More rows than one chunk: several row groups, and a model fitted on the first chunk
    predicts the second one (every chunk is drawn from the same class structure)."""
    from sklearn.linear_model import LogisticRegression

    rows = SYNTHETIC_CHUNK_ROWS + 20_000
    result = download_data(f"synthetic:rows={rows},features=10,seed=5", tmp_path)
    assert result["rows"] == rows
    assert pq.ParquetFile(result["path"]).metadata.num_row_groups == 2
    df = pd.read_parquet(result["path"])
    first, second = df.iloc[: SYNTHETIC_CHUNK_ROWS], df.iloc[SYNTHETIC_CHUNK_ROWS :]
    model = LogisticRegression(max_iter=500).fit(first.drop(columns=LABEL), first[LABEL])
    assert model.score(second.drop(columns=LABEL), second[LABEL]) > 0.7
    assert 0.4 < df[LABEL].mean() < 0.6


@pytest.mark.parametrize(
    "spec",
    [
        "synthetic:rows=abc",
        "synthetic:rows=10,colour=3",
        "synthetic:rows",
        "synthetic:rows=0",
        "synthetic:features=1",
        "synthetic:classes=1",
        "synthetic:seed=-1",
        "synthetic:rows=10,,features=3",
        "synthetic:features=2,classes=5",
    ],
)
def test_malformed_synthetic_spec(tmp_path: Path, spec: str) -> None:
    with pytest.raises(DataError, match="malformed synthetic source"):
        download_data(spec, tmp_path)
    assert not (tmp_path / "raw.parquet").exists()


def test_http_download_csv_with_checksum(tmp_path: Path, http_dir: tuple[Path, str]) -> None:
    root, base = http_dir
    df = frame(rows=30)
    df.to_csv(root / "data.csv", index=False)
    digest = sha256_of(root / "data.csv")
    result = download_data(f"{base}/data.csv", tmp_path / "out", sha256=digest)
    assert result["source_sha256"] == digest
    pd.testing.assert_frame_equal(pd.read_parquet(result["path"]), df)
    assert leftovers(tmp_path / "out") == []


def test_http_download_parquet_without_checksum(tmp_path: Path, http_dir: tuple[Path, str]) -> None:
    root, base = http_dir
    df = frame(rows=25)
    write(df, root / "data.bin")  # format found from the content, not the name
    result = download_data(f"{base}/data.bin", tmp_path)
    pd.testing.assert_frame_equal(pd.read_parquet(result["path"]), df)


def test_http_wrong_checksum_keeps_previous_data(tmp_path: Path, http_dir: tuple[Path, str]) -> None:
    root, base = http_dir
    frame(rows=30).to_csv(root / "data.csv", index=False)
    previous = download_data("sklearn:iris", tmp_path)
    with pytest.raises(DataError, match="checksum mismatch.*expected sha256 " + "ab" * 32):
        download_data(f"{base}/data.csv", tmp_path, sha256="ab" * 32)
    assert sha256_of(tmp_path / "raw.parquet") == previous["fingerprint"]  # untouched
    assert leftovers(tmp_path) == []


def test_http_not_found(tmp_path: Path, http_dir: tuple[Path, str]) -> None:
    _, base = http_dir
    with pytest.raises(DataError, match="HTTP 404"):
        download_data(f"{base}/missing.csv", tmp_path)
    assert leftovers(tmp_path) == []


def test_unreachable_url_fails_fast(tmp_path: Path, closed_port: int) -> None:
    started = time.monotonic()
    with pytest.raises(DataError, match="cannot download .*ConnectError"):
        download_data(f"http://127.0.0.1:{closed_port}/data.csv", tmp_path, timeout=5)
    assert time.monotonic() - started < 5
    assert leftovers(tmp_path) == []


def test_out_dir_blocked_by_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OutputDirError, match="not writable"):
        download_data("sklearn:iris", blocker / "out")
    assert blocker.read_text() == "not a directory"


# --------------------------------------------------------------------------- validation


def failed_checks(exc: DataValidationError) -> set[str]:
    report = json.loads(Path(exc.report_path).read_text())
    assert report["passed"] is False and report["failures"] == exc.failures
    return {f"{c['check']}:{c['column']}" for c in report["checks"] if c["passed"] is False}


def test_validate_passes_and_writes_report(tmp_path: Path) -> None:
    raw = download_data("sklearn:wine", tmp_path)
    result = validate_data(raw["path"], tmp_path)
    assert result["passed"] is True and result["rows"] == 178
    report = json.loads((tmp_path / "validation.json").read_text())
    assert result["report_path"] == str(tmp_path / "validation.json")
    assert report["passed"] is True and report["failures"] == []
    assert all(c["passed"] is True for c in report["checks"])
    names = {c["check"] for c in report["checks"]}
    assert names == {"non_empty", "min_rows", "has_features", "duplicate_fraction", "numeric", "null_fraction",
                     "finite", "min_classes"}
    assert len([c for c in report["checks"] if c["check"] == "null_fraction"]) == 13  # one per feature
    json.dumps(result)  # small and JSON-able, fit for XCom


def test_single_class_label(tmp_path: Path) -> None:
    df = frame()
    df[LABEL] = 1
    with pytest.raises(DataValidationError, match="min_classes") as info:
        validate_data(write(df, tmp_path / "d.parquet"), tmp_path)
    assert failed_checks(info.value) == {f"min_classes:{LABEL}"}


def test_all_null_column(tmp_path: Path) -> None:
    df = frame()
    df["x1"] = np.nan
    with pytest.raises(DataValidationError, match=r"null_fraction\[x1\].*measured 1\.0") as info:
        validate_data(write(df, tmp_path / "d.parquet"), tmp_path)
    assert failed_checks(info.value) == {"null_fraction:x1"}


def test_null_fraction_threshold_is_configurable(tmp_path: Path) -> None:
    df = frame(rows=100)
    df.loc[:29, "x0"] = np.nan  # 30 %
    path = write(df, tmp_path / "d.parquet")
    with pytest.raises(DataValidationError, match="null_fraction"):
        validate_data(path, tmp_path)
    assert validate_data(path, tmp_path, max_null_fraction=0.5)["passed"] is True


def test_inf_values(tmp_path: Path) -> None:
    df = frame()
    df.loc[3, "x2"] = np.inf
    df.loc[7, "x2"] = -np.inf
    with pytest.raises(DataValidationError, match=r"finite\[x2\].*measured 2") as info:
        validate_data(write(df, tmp_path / "d.parquet"), tmp_path)
    assert failed_checks(info.value) == {"finite:x2"}


def test_duplicate_rows(tmp_path: Path) -> None:
    df = frame(rows=50)
    df = pd.concat([df, df.iloc[:10]], ignore_index=True)  # 10 of 60 rows repeat earlier ones
    with pytest.raises(DataValidationError, match="duplicate_fraction") as info:
        validate_data(write(df, tmp_path / "d.parquet"), tmp_path)
    report = json.loads(Path(info.value.report_path).read_text())
    dup = next(c for c in report["checks"] if c["check"] == "duplicate_fraction")
    assert dup["measured"] == pytest.approx(df.duplicated().mean(), abs=1e-6)


def test_duplicate_count_is_exact() -> None:
    df = frame(rows=2000, features=4, seed=9)
    df = pd.concat([df, df.sample(137, random_state=1), df.sample(20, random_state=2)], ignore_index=True)
    assert _count_duplicates(df) == int(df.duplicated().sum()) > 0
    assert _count_duplicates(frame(rows=500)) == 0


def test_missing_label_and_non_numeric_feature(tmp_path: Path) -> None:
    df = frame().drop(columns=LABEL)
    df["colour"] = "red"
    with pytest.raises(DataValidationError) as info:
        validate_data(write(df, tmp_path / "d.parquet"), tmp_path)
    assert failed_checks(info.value) == {f"label_present:{LABEL}", "numeric:colour"}


def test_null_labels(tmp_path: Path) -> None:
    df = frame().astype({LABEL: float})
    df.loc[[1, 2], LABEL] = np.nan
    with pytest.raises(DataValidationError) as info:
        validate_data(write(df, tmp_path / "d.parquet"), tmp_path)
    assert failed_checks(info.value) == {f"not_nullable:{LABEL}"}


def test_every_failure_is_reported_at_once(tmp_path: Path) -> None:
    df = frame(rows=6)
    df[LABEL] = 0
    df["x0"] = np.nan
    df.loc[0, "x1"] = np.inf
    df = pd.concat([df, df.iloc[1:3]], ignore_index=True)
    with pytest.raises(DataValidationError) as info:
        validate_data(write(df, tmp_path / "d.parquet"), tmp_path, min_rows=10)
    expected = {"min_rows:None", "duplicate_fraction:None", "null_fraction:x0", "finite:x1", f"min_classes:{LABEL}"}
    assert failed_checks(info.value) == expected
    assert len(info.value.failures) == 5
    for name in ("min_rows", "duplicate_fraction", "null_fraction[x0]", "finite[x1]", "min_classes"):
        assert name in str(info.value)


def test_empty_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError) as info:
        validate_data(write(frame().iloc[:0], tmp_path / "d.parquet"), tmp_path)
    assert {"non_empty:None", "min_rows:None", f"min_classes:{LABEL}"} <= failed_checks(info.value)


def test_validate_unreadable_input(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as missing:
        validate_data(tmp_path / "nope.parquet", tmp_path)
    assert not isinstance(missing.value, DataValidationError)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        validate_data(bad, tmp_path)


def test_validate_bad_threshold(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_null_fraction"):
        validate_data(tmp_path / "x.parquet", tmp_path, max_null_fraction=1.5)


# --------------------------------------------------------------------------- preprocessing


def test_preprocess_split_scaling_without_leakage(tmp_path: Path) -> None:
    df = frame(rows=200, features=4, seed=2, classes=3)
    df["x0"] = df["x0"] * 10 + 5
    raw = write(df, tmp_path / "raw.parquet")
    result = preprocess_data(raw, tmp_path, test_size=0.25, seed=7, dtype="float64")
    assert (result["rows_train"], result["rows_holdout"]) == (150, 50)
    train, holdout = pd.read_parquet(result["train_path"]), pd.read_parquet(result["holdout_path"])
    # the same stratified split, computed independently; statistics from the training rows only
    train_idx, hold_idx = train_test_split(np.arange(200), test_size=0.25, random_state=7, stratify=df[LABEL])
    features = ["x0", "x1", "x2", "x3"]
    raw_train = df.iloc[train_idx][features].to_numpy()
    mean, std = raw_train.mean(axis=0), raw_train.std(axis=0)
    np.testing.assert_allclose(train[features].to_numpy(), (raw_train - mean) / std, atol=1e-12)
    np.testing.assert_allclose(holdout[features].to_numpy(), (df.iloc[hold_idx][features].to_numpy() - mean) / std, atol=1e-12)
    np.testing.assert_array_equal(holdout[LABEL], df[LABEL].to_numpy()[hold_idx])
    assert abs(holdout["x0"].mean()) > 1e-6  # the holdout was not re-centred on itself
    assert sorted(train[LABEL].value_counts()) == [50, 50, 50]
    params = json.loads(Path(result["preprocessing_path"]).read_text())
    np.testing.assert_allclose(params["mean"], mean)
    # the default stores the same values as float32
    small = preprocess_data(raw, tmp_path / "f32", test_size=0.25, seed=7)
    train32 = pd.read_parquet(small["train_path"])
    assert (train32[features].dtypes == np.float32).all() and train32[LABEL].dtype == df[LABEL].dtype
    np.testing.assert_allclose(train32[features].to_numpy(), train[features].to_numpy(), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        preprocess_data(raw, tmp_path, dtype="int8")


def test_preprocess_imputes_train_medians(tmp_path: Path) -> None:
    df = frame(rows=100, features=3)
    df.loc[::5, "x1"] = np.nan
    df["x2"] = np.nan  # all null: kept, filled with 0
    result = preprocess_data(write(df, tmp_path / "raw.parquet"), tmp_path)
    train, holdout = pd.read_parquet(result["train_path"]), pd.read_parquet(result["holdout_path"])
    assert not train.isna().any().any() and not holdout.isna().any().any()
    assert (train["x2"] == 0).all() and list(train.columns) == ["x0", "x1", "x2", LABEL]
    params = json.loads(Path(result["preprocessing_path"]).read_text())
    assert params["median"][2] == 0.0


def test_median_fill_matches_simple_imputer() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(301, 5))
    x[rng.random(x.shape) < 0.15] = np.nan
    x[:, 4] = np.nan
    expected = SimpleImputer(strategy="median", keep_empty_features=True).fit(x)
    other = rng.normal(size=(40, 5))
    other[rng.random(other.shape) < 0.3] = np.nan
    want = expected.transform(other)
    filled = x.copy()
    medians = [_median(filled[:, j]) for j in range(x.shape[1])]
    np.testing.assert_allclose(medians, expected.statistics_)
    for j, median in enumerate(medians):
        _fill(filled[:, j], median)
        _fill(other[:, j], median)
    np.testing.assert_allclose(other, want)
    np.testing.assert_allclose(filled, expected.transform(x))


def test_preprocess_is_reproducible(tmp_path: Path) -> None:
    raw = download_data("sklearn:breast_cancer", tmp_path)["path"]
    a = preprocess_data(raw, tmp_path / "a", seed=1)
    b = preprocess_data(raw, tmp_path / "b", seed=1)
    c = preprocess_data(raw, tmp_path / "c", seed=2)
    assert sha256_of(Path(a["train_path"])) == sha256_of(Path(b["train_path"])) != sha256_of(Path(c["train_path"]))
    assert sha256_of(Path(a["holdout_path"])) == sha256_of(Path(b["holdout_path"]))
    preprocess_data(raw, tmp_path / "a", seed=1)  # re-run in place: same bytes, nothing left over
    assert sha256_of(Path(a["train_path"])) == sha256_of(Path(b["train_path"]))
    assert [p for p in leftovers(tmp_path / "a")] == []


def test_preprocess_bad_inputs(tmp_path: Path) -> None:
    df = frame(rows=30)
    df.loc[0, LABEL] = 7  # a class with one member cannot be stratified
    with pytest.raises(DataError, match="cannot split"):
        preprocess_data(write(df, tmp_path / "one.parquet"), tmp_path)
    with pytest.raises(DataError, match="no label column"):
        preprocess_data(write(frame().drop(columns=LABEL), tmp_path / "nolabel.parquet"), tmp_path)
    text = frame().assign(colour="red")
    with pytest.raises(DataError, match="non-numeric feature columns: colour"):
        preprocess_data(write(text, tmp_path / "text.parquet"), tmp_path)
    with pytest.raises(ValueError, match="test_size"):
        preprocess_data(tmp_path / "one.parquet", tmp_path, test_size=1.0)
    with pytest.raises(DataError, match="does not exist"):
        preprocess_data(tmp_path / "missing.parquet", tmp_path)
    assert not (tmp_path / "train.parquet").exists()


# --------------------------------------------------------------------------- features


def test_feature_engineering_selects_on_train_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = np.arange(400) % 2
    train = pd.DataFrame({f"x{i}": rng.normal(size=400) for i in range(6)})
    train["x4"] += 3 * y  # most related to the label in train
    train["x1"] += 2 * y
    train[LABEL] = y
    holdout = pd.DataFrame({f"x{i}": rng.normal(size=100) for i in range(6)})
    holdout["x0"] += 5 * (np.arange(100) % 2)  # strongest in the holdout: must not matter
    holdout[LABEL] = np.arange(100) % 2
    result = feature_engineering(write(train, tmp_path / "t.parquet"), write(holdout, tmp_path / "h.parquet"),
                                    tmp_path, top_k=3)
    assert result["selected"][:2] == ["x4", "x1"] and "x0" not in result["selected"]
    expected_derived = ["row_mean", "row_std", "row_min", "row_max"] + [
        f"{a}_x_{b}" for i, a in enumerate(result["selected"]) for b in result["selected"][i + 1 :]
    ]
    assert result["derived"] == expected_derived
    assert result["features"] == 6 + 4 + 3
    out = pd.read_parquet(result["holdout_path"])
    assert list(out.columns) == [f"x{i}" for i in range(6)] + expected_derived + [LABEL]
    np.testing.assert_allclose(out["x4_x_x1"], holdout["x4"] * holdout["x1"])
    np.testing.assert_allclose(out["row_max"], holdout[[f"x{i}" for i in range(6)]].max(axis=1))
    np.testing.assert_array_equal(out[LABEL], holdout[LABEL])


def test_feature_engineering_is_deterministic(tmp_path: Path) -> None:
    raw = download_data("sklearn:wine", tmp_path)["path"]
    split = preprocess_data(raw, tmp_path)
    a = feature_engineering(split["train_path"], split["holdout_path"], tmp_path / "a")
    b = feature_engineering(split["train_path"], split["holdout_path"], tmp_path / "b")
    assert a["features"] == 13 + 4 + 6
    assert (pd.read_parquet(a["train_path"]).drop(columns=LABEL).dtypes == np.float32).all()  # kept float32
    assert sha256_of(Path(a["train_path"])) == sha256_of(Path(b["train_path"]))
    assert sha256_of(Path(a["holdout_path"])) == sha256_of(Path(b["holdout_path"]))
    assert json.loads(json.dumps(a)) == a


def test_feature_engineering_bad_inputs(tmp_path: Path) -> None:
    train = write(frame(), tmp_path / "t.parquet")
    with pytest.raises(DataError, match="lacks feature columns: x2"):
        feature_engineering(train, write(frame().drop(columns="x2"), tmp_path / "h.parquet"), tmp_path)
    with pytest.raises(DataError, match="holdout split .* does not exist"):
        feature_engineering(train, tmp_path / "missing.parquet", tmp_path)
    single = write(frame(features=1), tmp_path / "one.parquet")
    result = feature_engineering(single, single, tmp_path / "single")
    assert result["derived"] == ["row_mean", "row_std", "row_min", "row_max"]
