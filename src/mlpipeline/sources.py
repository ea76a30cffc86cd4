"""What a run may read: the data source forms and their limits, checked before anything is read.

Stdlib only, cheap to import: the DAG file builds its ``source`` parameter's schema from here
(`SOURCE_PATTERN`, checked when a run is triggered), and `check_source` does the rest at the
start of the download task, before a byte is read or generated:

- ``sklearn:<name>`` for one of `SKLEARN_DATASETS`;
- ``synthetic:rows=N,features=F,seed=S[,classes=C]`` within the `SYNTHETIC_LIMITS`, which keep
  the later stages (which hold the table in memory, several copies of it) within a few GB;
- an ``http(s)://`` URL (its limits are in `mlpipeline.remote`);
- a local ``.csv``/``.parquet`` file under one of the settings' `data_dirs` (the data root,
  the project, `MLWF_ALLOWED_DATA_DIRS`), judged after resolving symlinks and ``..``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from mlpipeline.remote import redact_url

SKLEARN_DATASETS = ("breast_cancer", "wine", "iris", "digits")
FILE_SUFFIXES = (".csv", ".parquet", ".pq")
SYNTHETIC_DEFAULTS = {"rows": 1000, "features": 20, "seed": 0, "classes": 2}
#: Inclusive bounds of each synthetic item, and of rows x features (800 MB as float64).
SYNTHETIC_LIMITS = {"rows": (1, 10_000_000), "features": (2, 1_000), "seed": (0, 2**32 - 1), "classes": (2, 100)}
SYNTHETIC_MAX_CELLS = 100_000_000

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]+:")
_URL = re.compile(r"^https?://", re.IGNORECASE)

#: The source's form, as a JSON-schema pattern (no flags there): a known scheme, or no scheme at all.
SOURCE_PATTERN = (
    r"^\s*(sklearn:(" + "|".join(SKLEARN_DATASETS) + r")|synthetic:.*|[hH][tT][tT][pP][sS]?://\S+"
    r"|[^:]*|[/~.].*)\s*$"
)
SOURCE_HELP = (
    f"sklearn:<{'|'.join(SKLEARN_DATASETS)}>; "
    f"synthetic:rows=N,features=F,seed=S[,classes=C] (rows <= {SYNTHETIC_LIMITS['rows'][1]:,}, "
    f"features <= {SYNTHETIC_LIMITS['features'][1]:,}, rows x features <= {SYNTHETIC_MAX_CELLS:,}, "
    f"classes <= {SYNTHETIC_LIMITS['classes'][1]}); "
    "an http(s) URL (capped by MLWF_DOWNLOAD_MAX_BYTES and MLWF_DOWNLOAD_TIMEOUT); "
    "or a .csv/.parquet path under the project, the data root or MLWF_ALLOWED_DATA_DIRS"
)


class DataError(ValueError):
    """The dataset cannot be used: unreadable, corrupt, bad source string, bad checksum, unreachable.

    `retryable`: a later try may succeed (a URL source's network trouble, 5xx, its deadline).
    """

    retryable = False


@dataclass(frozen=True)
class Source:
    """A checked source: `kind` is sklearn, synthetic, url or file."""

    kind: str
    text: str
    path: Path | None = None
    spec: dict[str, int] = field(default_factory=dict)

    @property
    def shown(self) -> str:
        """The source as it may be recorded (credentials in a URL redacted)."""
        return redact_url(self.text) if self.kind == "url" else self.text


def check_source(
    source: str | os.PathLike[str] | None, data_dirs: tuple[Path, ...], *, base: Path | None = None
) -> Source:
    """Parse `source` and check it against the limits; raise DataError saying which one it breaks.

    A relative path is taken relative to `base` (the project), else the current directory.
    """
    text = os.fspath(source).strip() if source is not None else ""
    if not text:
        raise DataError("empty data source")
    if text.startswith("sklearn:"):
        name = text.removeprefix("sklearn:")
        if name not in SKLEARN_DATASETS:
            raise DataError(f"unknown sklearn dataset {name!r}; choose one of {', '.join(SKLEARN_DATASETS)}")
        return Source("sklearn", text)
    if text.startswith("synthetic:"):
        return Source("synthetic", text, spec=parse_synthetic_spec(text))
    if _URL.match(text):
        return Source("url", text)
    if _SCHEME.match(text) and not Path(text).exists():
        raise DataError(
            f"unsupported data source {text!r}: use sklearn:<name>, synthetic:rows=N,features=F,seed=S, "
            "http(s)://..., or a local .csv/.parquet path"
        )
    return Source("file", text, path=admit_path(text, data_dirs, base=base))


def admit_path(text: str, data_dirs: tuple[Path, ...], *, base: Path | None = None) -> Path:
    """The resolved path of `text` if it lies under one of `data_dirs` (symlinks and ``..``
    resolved first, on both sides), else DataError; nothing is opened."""
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    resolved = path.resolve()
    for root in data_dirs:
        if resolved.is_relative_to(root.resolve()):
            return resolved
    allowed = ", ".join(str(root) for root in data_dirs) or "(none)"
    shown = text if str(resolved) == text else f"{text} (that is {resolved})"
    raise DataError(
        f"data file {shown} is outside the folders data may be read from: {allowed}; "
        "move it there or add its folder to MLWF_ALLOWED_DATA_DIRS"
    )


def parse_synthetic_spec(source: str) -> dict[str, int]:
    """Parse `synthetic:rows=N,features=F,seed=S[,classes=C]` into a dict of ints within the limits."""
    usage = "expected synthetic:rows=N,features=F,seed=S[,classes=C]"
    body = source.removeprefix("synthetic:").strip()
    spec = dict(SYNTHETIC_DEFAULTS)
    if body:
        for part in body.split(","):
            key, sep, value = part.partition("=")
            key = key.strip()
            if not sep or key not in SYNTHETIC_DEFAULTS:
                raise DataError(f"malformed synthetic source {source!r}: bad item {part!r}; {usage}")
            try:
                spec[key] = int(value.strip().replace("_", ""))
            except ValueError:
                raise DataError(f"malformed synthetic source {source!r}: {key} must be an integer; {usage}") from None
    for key, (low, high) in SYNTHETIC_LIMITS.items():
        if not low <= spec[key] <= high:
            raise DataError(f"malformed synthetic source {source!r}: {key} must be between {low:,} and {high:,}")
    if spec["rows"] * spec["features"] > SYNTHETIC_MAX_CELLS:
        raise DataError(
            f"malformed synthetic source {source!r}: rows x features must be at most {SYNTHETIC_MAX_CELLS:,} "
            f"(got {spec['rows'] * spec['features']:,})"
        )
    informative = synthetic_layout(spec["features"])[0]
    if spec["classes"] > 2 ** min(informative, 30):
        raise DataError(f"malformed synthetic source {source!r}: too many classes for {spec['features']} features")
    return spec


def synthetic_layout(features: int) -> tuple[int, int, int]:
    """(informative, redundant, noise) feature counts of a synthetic table."""
    informative = max(2, features // 2)
    redundant = min(features - informative, features // 4)
    return informative, redundant, features - informative - redundant
