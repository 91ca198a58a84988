"""The `grafana-clickhouse-datasource` query type for grafana-foundation-sdk.

The SDK ships no ClickHouse query type, so this is one written as the SDK's custom
dataquery extension: a `cog.variants.Dataquery` model, its builder, and a variant
registered with `cog.runtime` so dashboards round-trip through `Dashboard.from_json`.
"""

from __future__ import annotations

import typing

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import dashboard

PLUGIN_ID = "grafana-clickhouse-datasource"
DATASOURCE_UID = "llmpulse-clickhouse"

QueryType = typing.Literal["table", "timeSeries", "logs", "traces"]

# The backend's sqlutil.FormatQueryOption: 0 time series, 1 table, 2 logs, 3 trace.
FORMAT_BY_QUERY_TYPE: dict[str, int] = {"timeSeries": 0, "table": 1, "logs": 2, "traces": 3}


def datasource_ref(uid: str = DATASOURCE_UID) -> dashboard.DataSourceRef:
    return dashboard.DataSourceRef(type_val=PLUGIN_ID, uid=uid)


class ClickHouseQuery(cogvariants.Dataquery):
    """A SQL-editor query of the ClickHouse plugin (`CHSqlQuery`)."""

    def __init__(
        self,
        ref_id: str = "A",
        raw_sql: str = "",
        query_type: str = "table",
        datasource: dashboard.DataSourceRef | None = None,
        hide: bool | None = None,
    ) -> None:
        self.ref_id = ref_id
        self.raw_sql = raw_sql
        self.query_type = query_type
        self.datasource = datasource
        self.hide = hide

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {
            "refId": self.ref_id,
            "editorType": "sql",
            "queryType": self.query_type,
            "format": FORMAT_BY_QUERY_TYPE[self.query_type],
            "rawSql": self.raw_sql,
        }
        if self.datasource is not None:
            payload["datasource"] = self.datasource.to_json()
        if self.hide is not None:
            payload["hide"] = self.hide
        return payload

    @classmethod
    def from_json(cls, data: dict[str, typing.Any]) -> "ClickHouseQuery":
        ds = data.get("datasource")
        return cls(
            ref_id=data.get("refId", "A"),
            raw_sql=data.get("rawSql", ""),
            query_type=data.get("queryType", "table"),
            datasource=dashboard.DataSourceRef.from_json(ds) if ds else None,
            hide=data.get("hide"),
        )


class ClickHouseQueryBuilder(cogbuilder.Builder[ClickHouseQuery]):
    def __init__(self) -> None:
        self._internal = ClickHouseQuery(datasource=datasource_ref())

    def build(self) -> ClickHouseQuery:
        return self._internal

    def ref_id(self, ref_id: str) -> typing.Self:
        self._internal.ref_id = ref_id
        return self

    def sql(self, raw_sql: str) -> typing.Self:
        self._internal.raw_sql = raw_sql.strip()
        return self

    def query_type(self, query_type: QueryType) -> typing.Self:
        self._internal.query_type = query_type
        return self

    def time_series(self) -> typing.Self:
        return self.query_type("timeSeries")

    def table(self) -> typing.Self:
        return self.query_type("table")

    def datasource(self, ref: dashboard.DataSourceRef) -> typing.Self:
        self._internal.datasource = ref
        return self

    def hide(self, hide: bool) -> typing.Self:
        self._internal.hide = hide
        return self


def register() -> None:
    cogruntime.register_dataquery_variant(
        cogruntime.DataqueryConfig(identifier=PLUGIN_ID, from_json_hook=ClickHouseQuery.from_json)
    )


register()
