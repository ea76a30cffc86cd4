"""Synthetic sources' tables: a classification problem drawn from a seed, written in chunks.

The spec (``synthetic:rows=N,features=F,seed=S[,classes=C]``) and its limits live in
`mlpipeline.sources`; here the table is generated in bounded memory, and the same spec
always gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pyarrow
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from mlpipeline.files import atomic_path
from mlpipeline.parallel import ahead
from mlpipeline.sources import synthetic_layout
from mlpipeline.storage import LABEL, PARQUET_OPTIONS, dictionary_columns

SYNTHETIC_CHUNK_ROWS = 100_000  # fixed, so a (rows, seed) pair always yields the same data


class _SyntheticModel:
    """scikit-learn's `make_classification` model, with its random structure drawn once.

    `make_classification` draws cluster centroids and covariances from the same generator
    as the samples, so calling it per chunk would give every chunk a different problem.
    Here the structure (hypercube-vertex centroids, one random linear map per cluster,
    redundant combinations, feature order) comes from the seed alone, and each chunk of
    samples from its own (seed, chunk index) stream, so chunks share one problem and any
    row count is generated in bounded memory.
    """

    flip_y = 0.01
    class_sep = 1.0

    def __init__(self, features: int, classes: int, seed: int) -> None:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
        self.features, self.classes, self.seed = features, classes, seed
        self.informative, self.redundant, self.noise = synthetic_layout(features)
        per_class = 2 if classes * 2 <= 2 ** min(self.informative, 30) else 1
        self.clusters = classes * per_class
        self.centroids = self._vertices(rng) * self.class_sep
        self.linear = 2 * rng.random((self.clusters, self.informative, self.informative)) - 1
        self.combine = 2 * rng.random((self.informative, self.redundant)) - 1
        self.order = rng.permutation(features)

    def _vertices(self, rng: np.random.Generator) -> np.ndarray:
        while True:  # distinct random vertices of the {-1, 1} hypercube
            signs = rng.choice([-1.0, 1.0], size=(self.clusters, self.informative))
            if len(np.unique(signs, axis=0)) == self.clusters:
                return signs

    def chunk(self, index: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 1, index]))
        cluster = rng.integers(self.clusters, size=rows)
        informative = rng.standard_normal((rows, self.informative))
        for k in range(self.clusters):
            members = cluster == k
            informative[members] = informative[members] @ self.linear[k] + self.centroids[k]
        parts = [informative, informative @ self.combine, rng.standard_normal((rows, self.noise))]
        x = np.hstack(parts)[:, self.order]
        y = (cluster % self.classes).astype(np.int64)
        flip = rng.random(rows) < self.flip_y
        y[flip] = rng.integers(self.classes, size=int(flip.sum()))
        return x, y


def write_synthetic(target: Path, *, rows: int, features: int, seed: int, classes: int) -> None:
    """Generate the table of a checked synthetic spec into `target` (Parquet), chunk by chunk.

    The chunks' small matrix products run on one BLAS thread: a multi-threaded BLAS splits
    them differently by thread count (so the bytes depended on the machine's cores), and on
    matrices this thin its threads cost more CPU than they save (2-4x here under load).
    Instead, whole chunks are drawn on every core at once, each from its own stream, and
    written in order while the next ones are drawn (`parallel.ahead`): the same bytes on
    any number of cores.
    """
    model = _SyntheticModel(features, classes, seed)
    names = [f"feature_{i:02d}" for i in range(features)]
    schema = pyarrow.schema([(n, pyarrow.float64()) for n in names] + [(LABEL, pyarrow.int64())])
    with atomic_path(target) as tmp, threadpool_limits(limits=1, user_api="blas"):
        with pq.ParquetWriter(tmp, schema, use_dictionary=dictionary_columns(schema), **PARQUET_OPTIONS) as writer:
            sizes = [min(SYNTHETIC_CHUNK_ROWS, rows - start) for start in range(0, rows, SYNTHETIC_CHUNK_ROWS)]
            for x, y in ahead(lambda chunk: model.chunk(*chunk), enumerate(sizes)):
                arrays = [pyarrow.array(x[:, j]) for j in range(features)] + [pyarrow.array(y)]
                writer.write_table(pyarrow.Table.from_arrays(arrays, schema=schema))
