"""mlwf's Airflow plugin: brings the fix of `dag.test()`'s deadline lookup to every Airflow process
of an environment mlwf is installed in (`airflow dags test`, pytest calling `dag.test()`, the
stack's components), through the `airflow.plugins` entry point in pyproject.toml.

Airflow loads plugins before it bags a DAG (DagBag asks the listener manager, which loads
them), so the fix is in place before any run of `dag.test()` ends. The plugin adds nothing
else to Airflow: no views, no operators, no listeners.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from mlflowctl.backends.airflow_fixes import fix_dag_test_deadline


class MlwfFixes(AirflowPlugin):
    name = "mlwf_fixes"

    @classmethod
    def on_load(cls, *args, **kwargs) -> None:
        if not fix_dag_test_deadline():
            import logging

            logging.getLogger(__name__).warning(
                "mlwf: fix_dag_test_deadline: Airflow differs from what airflow_fixes.py was written for; left as it is"
            )
