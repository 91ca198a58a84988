-- Read-only ClickHouse user for Grafana (run once on a ClickHouse server; embedded chDB
-- has no users). readonly=1 forbids writes and settings changes; add a row policy per
-- tenant for tenant-scoped data sources.
CREATE USER IF NOT EXISTS grafana_ro IDENTIFIED WITH sha256_password BY '{password}'
    SETTINGS readonly = 1;
GRANT SELECT ON {db}.* TO grafana_ro;
