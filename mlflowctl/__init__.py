"""mlwf: run and watch ML pipelines on Apache Airflow 3."""

__version__ = "0.1.0"
