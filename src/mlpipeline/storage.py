"""Where the pipeline's stages keep their outputs: a folder per stage, and Parquet tables.

Every stage writes under the `out_dir` it is given, atomically and durably
(`mlpipeline.files`), so re-running a task replaces its outputs and no reader, in this run
or a later one, ever sees half a file. The tables stages pass each other hold numeric
feature columns and one label column, `LABEL`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pyarrow

from mlpipeline.files import atomic_path, remove_stale_temps
from mlpipeline.sources import DataError

LABEL = "target"


class OutputDirError(OSError):
    """The output directory cannot be created or written to."""


def ensure_out_dir(out_dir: str | os.PathLike[str]) -> Path:
    """Create `out_dir` if needed and prove it is writable, or raise OutputDirError."""
    path = Path(out_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path)  # what a killed earlier try of this task left half-written
        fd, probe = tempfile.mkstemp(dir=path, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputDirError(f"output directory {path} is not writable: {exc.strerror or exc}") from exc
    return path


def write_parquet(df: pd.DataFrame, path: str | os.PathLike[str]) -> str:
    """Write `df` (without its index) to `path` atomically; deterministic bytes for equal frames."""
    # Dictionary encoding only helps low-cardinality columns; on float features it costs time
    # and makes the file larger than the raw values.
    dictionary = [str(c) for c in df.columns if not pd.api.types.is_float_dtype(df[c].dtype)]
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False, engine="pyarrow", use_dictionary=dictionary)
    return str(path)


def read_parquet(path: str | os.PathLike[str], what: str = "dataset") -> pd.DataFrame:
    """Read a Parquet file, turning a missing or corrupt file into a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist")
    try:
        return pd.read_parquet(path, engine="pyarrow")
    except (ValueError, OSError, pyarrow.ArrowException) as exc:
        raise DataError(f"{what} {path} is not a readable Parquet file: {exc}") from exc


def is_numeric(s: pd.Series) -> bool:
    """A column a model can take as a feature (booleans are not)."""
    return pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype)


def feature_columns(df: pd.DataFrame, label: str, what: str) -> list[str]:
    """The feature columns of a stage table (all but `label`), or a DataError saying what is wrong."""
    if label not in df.columns:
        raise DataError(f"{what} has no label column {label!r}")
    features = [c for c in df.columns if c != label]
    if not features:
        raise DataError(f"{what} has no feature columns")
    bad = [c for c in features if not is_numeric(df[c])]
    if bad:
        raise DataError(f"{what} has non-numeric feature columns: {', '.join(bad)}")
    return features
