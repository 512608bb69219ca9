"""The PromQL reader the dashboard tests rely on finds exactly the series a query reads."""

from __future__ import annotations

from tests.dashboard import dashboard, exported_series, metric_names, queries


def test_metric_names_skip_functions_labels_and_grouping() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, runtime) (rate(sdtask_task_run_seconds_bucket{runtime=~"$runtime"}[5m])))'
        " / on (runtime) group_left sum by (runtime) (sdtask_runtime_ready_replicas) * 60"
    )
    assert metric_names(expr) == {"sdtask_task_run_seconds_bucket", "sdtask_runtime_ready_replicas"}
    assert metric_names('label_values(sdtask_runtime_queued_tasks{namespace=~"$namespace"}, runtime)') == {
        "sdtask_runtime_queued_tasks"
    }


def test_exposition_names_include_declared_families_without_samples() -> None:
    page = "# HELP x_total Things\n# TYPE x_total counter\n# HELP h Hist\n# TYPE h histogram\n"
    assert {"x_total", "h_bucket", "h_count"} <= exported_series(page)


def test_every_panel_has_a_query_reading_sdtask_metrics() -> None:
    board = dashboard()
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert panels and all(p.get("targets") for p in panels)
    assert all(name.startswith("sdtask_") for expr in queries(board) for name in metric_names(expr))
