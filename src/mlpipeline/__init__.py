"""The ML pipeline's task logic: plain Python, no Airflow import, tested without Airflow.

DAG files in `dags/` only wire these functions into tasks; pandas and scikit-learn
are imported inside the functions' modules, which the DAG files import inside tasks.
"""
