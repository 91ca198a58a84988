-- Read-only ClickHouse user for Grafana (run once on a ClickHouse server; embedded chDB
-- has no users; docker-compose.yml uses deploy/clickhouse/users.d/grafana_ro.xml instead).
-- readonly=2 forbids writes and DDL but lets the session set query settings: Grafana's
-- ClickHouse plugin sets max_execution_time, which readonly=1 refuses. Only SELECT is
-- granted, so table functions (file, url, s3, remote) are refused too. {grafana_network} is
-- where Grafana connects from (e.g. 10.0.0.5/32); add a row policy per tenant for tenant-scoped views.
CREATE USER IF NOT EXISTS grafana_ro IDENTIFIED WITH sha256_password BY '{password}'
    HOST IP '{grafana_network}'
    SETTINGS readonly = 2, max_execution_time = 60 MAX 300;
GRANT SELECT ON {db}.* TO grafana_ro;
