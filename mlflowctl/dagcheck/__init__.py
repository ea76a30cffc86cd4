"""CI without a stack: `mlwf parse` (do the DAG files import?) and `mlwf test` (does a DAG run green?).

Both run `child.py` in the Airflow runtime's python with the project's settings and a
metadata database of their own (runner.py starts it and reads what it reports); nothing
here talks to a server or touches a running stack's database, data or metrics.
"""
