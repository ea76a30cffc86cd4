"""The ML pipeline's task logic: plain Python, no Airflow import, tested without Airflow.

DAG files in `dags/` only wire these functions into tasks; pandas and scikit-learn
are imported inside the functions' modules, which the DAG files import inside tasks.

One module per stage: `download` (with `sources`, `remote`, `synthetic`), `validation`,
`preprocessing`, `features`, `model_training`, `model_deployment`, `notifications`. A stage
reads files, writes its outputs under the folder it is given (`storage`, `files`), seeds
everything random, and returns a small JSON-able dict (paths, counts) meant for XCom.
"""
