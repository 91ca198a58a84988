"""The worker's I/O shell: Kafka in and out, ClickHouse, Alertmanager, the faust app.

Everything outside this package in `llmpulse.processors` is pure (no Kafka, ClickHouse,
faust or network imports; tests/unit/test_purity.py checks it) and runs unchanged in
`llmpulse backtest`.
"""
