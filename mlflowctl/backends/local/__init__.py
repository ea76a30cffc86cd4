"""The embedded local backend: a real Airflow 3 stack as detached process groups, no Docker.

backend.py holds `LocalBackend`; the other modules say what they hold in their names.
"""
