"""Observability: Grafana dashboards (JSON in this package) over the metrics Ray exports.

`catalog` reads the dashboards and lists their queries, `grafana` pushes them with
grafana-client, `prometheus_config` writes a scrape config for a Ray cluster, and
`cli` is the `blatam dashboards` command group.
"""
