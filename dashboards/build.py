"""Dashboards (and alert provisioning) as code.

`build_all(out_dir)` renders every dashboard in `definitions.DASHBOARDS` with
grafana-foundation-sdk into `out_dir/<uid>.json`, and the alerting/data source
provisioning files into `dashboards/provisioning/`. The JSON is committed; a test fails
when it drifts from this code. Regenerate with `python -m llmpulse.dashboards.build`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import barchart, common, dashboard, piechart, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as dm

from .clickhouse import ClickHouseQueryBuilder, datasource_ref
from .definitions import DASHBOARDS, TRACE_UID, DashboardSpec, PanelSpec, VariableSpec

HERE = Path(__file__).resolve().parent
GENERATED_DIR = HERE / "generated"
PROVISIONING_DIR = HERE / "provisioning"

TRACE_LINK_URL = "/d/" + TRACE_UID + "?var-trace_id=${__value.raw}&${__url_time_range}"


def _query(panel: PanelSpec, ref_id: str = "A") -> ClickHouseQueryBuilder:
    return ClickHouseQueryBuilder().ref_id(ref_id).sql(panel.sql).query_type(panel.query_type)  # type: ignore[arg-type]


def _panel(spec: PanelSpec):
    if spec.viz == "timeseries":
        p = (timeseries.Panel().line_width(1).fill_opacity(10)
             .legend(common.VizLegendOptions().show_legend(True)
                     .display_mode(common_models.LegendDisplayMode.LIST)
                     .placement(common_models.LegendPlacement.BOTTOM)))
    elif spec.viz == "stat":
        p = (stat.Panel().graph_mode(common_models.BigValueGraphMode.NONE)
             .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
    elif spec.viz == "table":
        p = table.Panel().show_header(True)
    elif spec.viz == "barchart":
        p = barchart.Panel().orientation(common_models.VizOrientation.AUTO)
    elif spec.viz == "piechart":
        p = piechart.Panel().reduce_options(common.ReduceDataOptions().calcs(["sum"]).values(False))
    else:  # pragma: no cover - Viz is a Literal
        raise ValueError(spec.viz)
    p = (p.title(spec.title).description(spec.description).datasource(datasource_ref())
         .span(spec.width).height(spec.height).with_target(_query(spec)))
    if spec.unit:
        p = p.unit(spec.unit)
    if spec.trace_link_column:
        p = p.override_by_name(spec.trace_link_column, [
            dm.DynamicConfigValue(id_val="links", value=[
                {"title": "Open in trace explorer", "url": TRACE_LINK_URL},
            ]),
        ])
    return p


def _variable(spec: VariableSpec):
    if spec.sql is None:
        return dashboard.TextBoxVariable(spec.name).label(spec.label).default_value("")
    v = (dashboard.QueryVariable(spec.name).label(spec.label).query(spec.sql)
         .datasource(datasource_ref()).multi(spec.multi).include_all(spec.include_all)
         .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC))
    if spec.include_all:
        v = v.current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
    return v


def dashboard_builder(spec: DashboardSpec) -> dashboard.Dashboard:
    d = (dashboard.Dashboard(spec.title).uid(spec.uid).description(spec.description)
         .tags(list(spec.tags)).time(spec.time_from, "now").timezone("utc")
         .tooltip(dm.DashboardCursorSync.CROSSHAIR).editable())
    if spec.refresh:
        d = d.refresh(spec.refresh)
    d = d.link(dashboard.DashboardLink("llmpulse").type(dm.DashboardLinkType.DASHBOARDS)
               .tags(["llmpulse"]).as_dropdown(True).include_vars(True).keep_time(True))
    if spec.uid != TRACE_UID:
        d = d.link(dashboard.DashboardLink("Trace explorer").type(dm.DashboardLinkType.LINK)
                   .url("/d/" + TRACE_UID).icon("external link").keep_time(True))
    for var in spec.variables:
        d = d.with_variable(_variable(var))
    for ann in spec.annotations:
        d = d.annotation(
            dashboard.AnnotationQuery().name(ann.name).datasource(datasource_ref()).enable(True)
            .icon_color(ann.color)
            .target(ClickHouseQueryBuilder().ref_id("Anno").sql(ann.sql).table())  # type: ignore[arg-type]
        )
    for panel in spec.panels:
        d = d.with_panel(_panel(panel))
    return d


def render(spec: DashboardSpec) -> dict[str, Any]:
    """The dashboard JSON model, as a plain dict."""
    built = dashboard_builder(spec).build()
    return json.loads(json.dumps(built, cls=JSONEncoder))


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_all() -> dict[str, str]:
    """File name → content of every generated dashboard."""
    return {f"{spec.uid}.json": _dump(render(spec)) for spec in DASHBOARDS}


def render_provisioning() -> dict[str, str]:
    """File name (relative to provisioning/) → content of the provisioning files."""
    from . import alerts

    return alerts.provisioning_files()


def build_all(out_dir: str | Path = GENERATED_DIR, provisioning_dir: str | Path | None = PROVISIONING_DIR) -> list[Path]:
    """Write every dashboard to `out_dir/<uid>.json` (and provisioning files unless None)."""
    written: list[Path] = []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in render_all().items():
        path = out / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    if provisioning_dir is not None:
        pdir = Path(provisioning_dir)
        for name, text in render_provisioning().items():
            path = pdir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else GENERATED_DIR
    for path in build_all(out):
        print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
