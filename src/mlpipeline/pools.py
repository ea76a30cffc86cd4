"""The Airflow pools the DAGs use: the one list every stack creates.

It lives under ``src/`` because the DAG files name their pools and see only ``src/``; the
local backend creates these through the API after `up`, the docker backend passes them to
its init container (``MLWF_POOLS``). Plain data, stdlib only: importing it costs a DAG
parse and the CLI nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class Pool:
    slots: int
    description: str


TRAINING_POOL = "ml_training"

#: name -> Pool. A pool that exists already keeps the slots the user gave it.
POOLS: MappingProxyType[str, Pool] = MappingProxyType(
    {TRAINING_POOL: Pool(1, "model training, one at a time (ml_pipeline_dag)")}
)
