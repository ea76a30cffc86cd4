"""The validate stage: pandera checks of the raw table, all run at once, every failure named.

Each check records what it measured; the report (`validation.json`) lists every check with
its limit, measurement and verdict, whether the table passed or not.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa

from mlpipeline.files import atomic_write_json
from mlpipeline.parallel import each
from mlpipeline.sources import DataError
from mlpipeline.storage import LABEL, ensure_out_dir, is_numeric, read_parquet


class DataValidationError(DataError):
    """The dataset was read but failed validation checks; `failures` names every one of them."""

    def __init__(self, message: str, *, failures: list[str], report_path: str | os.PathLike[str]) -> None:
        super().__init__(message)
        self.failures = list(failures)
        self.report_path = str(report_path)


class _Checks:
    """The catalogue of checks: pandera runs them, each records what it measured here."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(
        self, name: str, column: str | None, description: str, limit: Any, test: Callable[[Any], tuple[Any, bool]]
    ) -> pa.Check:
        item: dict[str, Any] = {"check": name, "column": column, "description": description, "limit": limit}
        self.items.append(item)

        def run(data: Any) -> bool:
            measured, ok = test(data)
            item["measured"] = measured
            return bool(ok)

        return pa.Check(run, element_wise=False, ignore_na=False, name=name)


def _fraction(count: int, total: int) -> float:
    return round(count / total, 6) if total else 0.0


#: Odd multiplier that folds one column's hashes into a row's (modulo 2**64).
_ROW_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


def _row_hashes(df: pd.DataFrame) -> np.ndarray:
    """One uint64 per row, equal for equal rows: each column hashed by pandas on every core
    (parallel.each), folded in column order."""
    columns = each(lambda name: pd.util.hash_pandas_object(df[name], index=False).to_numpy(), list(df.columns))
    hashes = columns[0].copy()
    for column in columns[1:]:
        np.multiply(hashes, _ROW_HASH_MULTIPLIER, out=hashes)
        np.bitwise_xor(hashes, column, out=hashes)
    return hashes


def _count_duplicates(df: pd.DataFrame) -> int:
    """Rows equal to an earlier row. Exact, and linear: rows are hashed first, and only the
    rows whose hash repeats are compared value by value (DataFrame.duplicated on every row
    factorizes each column, which is several times slower on a million rows)."""
    if len(df) < 2 or len(df.columns) == 0:
        return 0
    candidates = pd.Series(_row_hashes(df)).duplicated(keep=False).to_numpy()
    if not candidates.any():
        return 0
    return int(df[candidates].duplicated().sum())


def _count_infinite(s: pd.Series) -> int:
    """Infinite values in a numeric column (0 for any other): a float column is read in place,
    others are converted to float first."""
    if not is_numeric(s):
        return 0
    values = s.to_numpy() if isinstance(s.dtype, np.dtype) and s.dtype.kind == "f" else s.to_numpy(dtype=float, na_value=np.nan)
    return int(np.isinf(values).sum())


def _build_schema(
    df: pd.DataFrame, *, label: str, max_null_fraction: float, max_duplicate_fraction: float, min_rows: int
) -> tuple[pa.DataFrameSchema, _Checks]:
    checks = _Checks()
    features = [c for c in df.columns if c != label]
    frame_checks = [
        checks.add("non_empty", None, "dataset has at least one row", 1, lambda d: (len(d), len(d) > 0)),
        checks.add("min_rows", None, f"dataset has at least {min_rows} rows", min_rows, lambda d: (len(d), len(d) >= min_rows)),
        checks.add(
            "has_features", None, "at least one feature column besides the label", 1,
            lambda d: (len(features), len(features) > 0),
        ),
        checks.add(
            "duplicate_fraction", None, f"fraction of duplicate rows <= {max_duplicate_fraction}",
            max_duplicate_fraction,
            lambda d: (f := _fraction(_count_duplicates(d), len(d)), f <= max_duplicate_fraction),
        ),
    ]
    columns: dict[str, pa.Column] = {}
    for name in features:
        columns[name] = pa.Column(
            None,
            nullable=True,
            checks=[
                checks.add("numeric", name, "feature is numeric", True, lambda s: (str(s.dtype), is_numeric(s))),
                checks.add(
                    "null_fraction", name, f"fraction of nulls <= {max_null_fraction}", max_null_fraction,
                    lambda s: (f := _fraction(int(s.isna().sum()), len(s)), f <= max_null_fraction),
                ),
                checks.add(
                    "finite", name, "no infinite values", 0,
                    lambda s: (n := _count_infinite(s), n == 0),
                ),
            ],
        )
    columns[label] = pa.Column(
        None,
        nullable=False,
        required=True,
        checks=[
            checks.add("min_classes", label, "label has at least 2 classes", 2, lambda s: (n := int(s.nunique()), n >= 2)),
        ],
    )
    return pa.DataFrameSchema(columns, checks=frame_checks, strict=False), checks


# pandera's own checks (not in our catalogue), as they appear in failure_cases
_PANDERA_CHECKS = {
    "column_in_dataframe": "column is present",
    "not_nullable": "column has no nulls",
}


def validate_data(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    label: str = LABEL,
    max_null_fraction: float = 0.2,
    max_duplicate_fraction: float = 0.1,
    min_rows: int = 10,
) -> dict[str, Any]:
    """Validate the dataset at `path` with pandera, every check at once (lazy validation).

    Always writes `out_dir/validation.json`; raises DataValidationError naming every failed
    check, or returns {"path", "report_path", "rows", "passed": True, "checks"}.
    """
    for name, value in (("max_null_fraction", max_null_fraction), ("max_duplicate_fraction", max_duplicate_fraction)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be between 0 and 1, got {value}")
    out = ensure_out_dir(out_dir)
    report_path = out / "validation.json"
    df = read_parquet(path)
    schema, catalogue = _build_schema(
        df, label=label, max_null_fraction=max_null_fraction,
        max_duplicate_fraction=max_duplicate_fraction, min_rows=min_rows,
    )
    failed: set[tuple[str | None, str]] = set()
    try:
        schema.validate(df, lazy=True, inplace=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        for column, check, case in zip(cases["column"], cases["check"], cases["failure_case"]):
            if check == "column_in_dataframe":
                column = case
            failed.add((None if pd.isna(column) else str(column), str(check)))
    checks: list[dict[str, Any]] = []
    for item in catalogue.items:
        key = (item["column"], item["check"])
        ran = "measured" in item
        checks.append({**item, "measured": item.get("measured"), "passed": (key not in failed) if ran else None})
        failed.discard(key)
    for column, check in sorted(failed, key=lambda k: (k[0] or "", k[1])):  # pandera's own checks
        description = _PANDERA_CHECKS.get(check, check)
        if check == "column_in_dataframe" and column == label:
            check, description = "label_present", f"label column {label!r} is present"
        checks.append({"check": check, "column": column, "description": description, "limit": None,
                       "measured": None, "passed": False})
    failures = [
        f"{c['check']}" + (f"[{c['column']}]" if c["column"] is not None else "") + f": {c['description']}"
        + (f" (measured {c['measured']})" if c["measured"] is not None else "")
        for c in checks
        if c["passed"] is False
    ]
    report = {
        "path": str(path),
        "rows": len(df),
        "label": label,
        "passed": not failures,
        "failures": failures,
        "checks": checks,
    }
    atomic_write_json(report_path, report)
    if failures:
        raise DataValidationError(
            f"{path} failed {len(failures)} validation check(s): " + "; ".join(failures) + f" (report: {report_path})",
            failures=failures,
            report_path=report_path,
        )
    return {"path": str(path), "report_path": str(report_path), "rows": len(df), "passed": True, "checks": checks}
