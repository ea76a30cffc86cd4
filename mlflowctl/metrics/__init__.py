"""Metrics plumbing: the embedded StatsD-to-Prometheus exporter."""
