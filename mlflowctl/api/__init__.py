"""HTTP clients: the Airflow REST API v2 and Prometheus."""
