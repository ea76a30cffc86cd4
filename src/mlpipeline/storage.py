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

import numpy as np
import pandas as pd
import pyarrow as pyarrow
import pyarrow.compute as pc
import pyarrow.parquet as pq

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
    return write_table(pyarrow.Table.from_pandas(df, preserve_index=False), path)


#: How every stage file is written. Its float columns are measurements and standardised
#: values, which Snappy cannot shrink (files within 0.1 % of the size) and no reader filters on,
#: so neither compression nor column statistics are written: 26 % less time writing at a
#: million rows (issue 17). Dictionary encoding only helps low-cardinality columns: on float
#: features it costs time and makes the file larger than the raw values.
PARQUET_OPTIONS = {"compression": "none", "write_statistics": False}


def dictionary_columns(schema: pyarrow.Schema) -> list[str]:
    """The columns worth dictionary encoding: all but the floating-point ones."""
    return [f.name for f in schema if not pyarrow.types.is_floating(f.type)]


def write_table(table: pyarrow.Table, path: str | os.PathLike[str]) -> str:
    """Write an Arrow table to `path` atomically, as it is: no pandas conversion, no copy."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, use_dictionary=dictionary_columns(table.schema), **PARQUET_OPTIONS)
    return str(path)


def read_parquet(path: str | os.PathLike[str], what: str = "dataset") -> pd.DataFrame:
    """Read a Parquet file, turning a missing or corrupt file into a DataError."""
    path = _existing(path, what)
    try:
        return pd.read_parquet(path, engine="pyarrow")
    except (ValueError, OSError, pyarrow.ArrowException) as exc:
        raise DataError(f"{what} {path} is not a readable Parquet file: {exc}") from exc


def read_table(path: str | os.PathLike[str], what: str = "dataset") -> pyarrow.Table:
    """Read a Parquet file as an Arrow table (no pandas frame), with read_parquet's errors."""
    path = _existing(path, what)
    try:
        return pq.read_table(path)
    except (ValueError, OSError, pyarrow.ArrowException) as exc:
        raise DataError(f"{what} {path} is not a readable Parquet file: {exc}") from exc


def _existing(path: str | os.PathLike[str], what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist")
    return path


def dtypes_frame(table: pyarrow.Table) -> pd.DataFrame:
    """An empty frame with the pandas dtypes `table`'s columns would read as: the column
    checks (`feature_columns`) judge an Arrow table exactly as they judge its frame."""
    return table.schema.empty_table().to_pandas()


def float_column(table: pyarrow.Table, name: str, dtype: type[np.floating] = np.float64) -> np.ndarray:
    """One column as a `dtype` array, nulls as NaN, as `DataFrame.to_numpy(dtype=...)` gives it
    (no copy when the column already is one chunk of `dtype` without nulls)."""
    column = table.column(name)
    if column.type != pyarrow.from_numpy_dtype(dtype):
        column = pc.cast(column, pyarrow.from_numpy_dtype(dtype), safe=False)
    return column.to_numpy()


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
