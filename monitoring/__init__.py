"""Monitoring of the whole service: what Prometheus scrapes (prometheus.py) and the recording
and alert rules with their promtool tests (rules/). See monitoring/README.md."""
