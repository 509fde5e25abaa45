#!/usr/bin/env python
"""Writes ops/grafana/bandmate.json, the Grafana dashboard of the metrics in app/metrics.py (import it in Grafana:
Dashboards > New > Import, then pick your Prometheus data source). tests/test_metrics.py checks every query in it
against the names the bot and the workers export."""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "ops" / "grafana" / "bandmate.json"
DS = {"type": "prometheus", "uid": "${datasource}"}


def quantiles(metric: str) -> list[tuple[str, str]]:
    return [(f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket[5m])))", f"p{int(q * 100)}")
            for q in (0.5, 0.95)]


PANELS = [
    ("Queue depth per model", "short", [("sum by (model) (bandmate_queue_depth)", "{{model}}")]),
    ("Jobs by state", "short", [("sum by (state) (bandmate_jobs)", "{{state}}")]),
    ("Jobs finished per minute", "short",
     [("sum by (state) (rate(bandmate_jobs_finished_total[5m])) * 60", "{{state}}")]),
    ("Decode steps per second", "short",
     [("sum by (model) (rate(bandmate_decode_steps_total[1m]))", "{{model}} (all)"),
      ("max by (model) (bandmate_decode_steps_per_second)", "{{model}} (latest batch)")]),
    ("Queued → started", "s", quantiles("bandmate_job_queued_to_started_seconds")),
    ("Started → done", "s", quantiles("bandmate_job_started_to_done_seconds")),
    ("Done → delivered", "s", quantiles("bandmate_job_done_to_delivered_seconds")),
    ("Deliveries per minute", "short",
     [("sum by (outcome) (rate(bandmate_deliveries_total[5m])) * 60", "{{outcome}}")]),
    ("Discord 429s (5 min)", "short",
     [("sum by (scope) (increase(bandmate_discord_rate_limited_total[5m]))", "{{scope}}")]),
    ("Model memory", "bytes",
     [("sum by (instance, model) (bandmate_model_memory_bytes)", "{{instance}} {{model}}"),
      ("sum by (instance, device) (bandmate_cuda_memory_allocated_bytes)", "{{instance}} cuda:{{device}}")]),
    ("Ready", "short", [("min by (instance) (bandmate_ready)", "{{instance}}")]),
    ("Workers: jobs held, batches per minute", "short",
     [("sum by (instance) (bandmate_worker_jobs_held)", "{{instance}} held"),
      ("sum by (instance) (rate(bandmate_worker_batches_total[5m])) * 60", "{{instance}} batches/min")]),
]


def dashboard() -> dict:
    panels = []
    for i, (title, unit, queries) in enumerate(PANELS):
        panels.append({
            "id": i + 1, "type": "timeseries", "title": title, "datasource": DS,
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"refId": chr(ord("A") + k), "datasource": DS, "expr": expr, "legendFormat": legend}
                        for k, (expr, legend) in enumerate(queries)],
        })
    return {
        "title": "Bandmate", "uid": "bandmate", "schemaVersion": 39, "version": 1, "editable": True,
        "time": {"from": "now-6h", "to": "now"}, "refresh": "30s", "tags": ["bandmate"],
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                 "label": "Prometheus"}]},
        "panels": panels,
    }


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {OUT}")
