"""The dashboard as code: the committed JSON is what monitoring/dashboard.py builds, and every
panel reads the Prometheus data source the user picks. (That each query names only metrics the
running stack exports: tests/integration/test_monitoring.py.)"""

from __future__ import annotations

import json

from monitoring import dashboard


def test_the_committed_dashboard_is_current():
    assert dashboard.OUTPUT.read_text() == dashboard.render(), (
        "monitoring/grafana/llm-service.json is stale: run `make docker-config` and commit it")


def test_every_panel_queries_the_chosen_prometheus_with_distinct_titles():
    model = json.loads(dashboard.OUTPUT.read_text())
    panels = [p for p in model["panels"] if p["type"] != "row"]
    assert len(panels) == sum(len(row) for _, row in dashboard.ROWS)
    assert all(p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
               for p in panels)
    assert all(p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"])
               for p in panels)
    titles = [p["title"] for p in panels]
    assert len(titles) == len(set(titles))
    assert model["uid"] == dashboard.UID
