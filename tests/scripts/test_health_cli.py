"""`blatam health` formatting (the end-to-end run is in tests/deployments/test_gateway.py)."""

from __future__ import annotations

from scripts.health import EXIT_CODES, health_rows, services_caption


def test_rows_cover_every_component_with_its_detail():
    report = {
        "status": "degraded",
        "services": {"redundancy": {"status": "healthy", "app": "redundancy", "latency_ms": 12.345},
                     "export": {"status": "unhealthy", "app": "export", "detail": "DEPLOY_FAILED: boom"}},
        "cache": {"status": "unknown", "app": "llm", "detail": "Serve's status did not answer in time"},
        "database": {"status": "healthy", "backend": "sqlite", "latency_ms": 1.0},
        "redis": {"status": "disabled", "rate_limits": "memory"},
        "services_from": "serve",
    }
    rows = health_rows(report)
    assert [row[0] for row in rows] == ["service export", "service redundancy", "cache", "database", "redis"]
    assert rows[0][1:] == ("unhealthy", "app=export, DEPLOY_FAILED: boom")
    assert rows[1][2] == "12.3 ms, app=redundancy"
    assert rows[4] == ("redis", "disabled", "rate_limits=memory")
    assert [EXIT_CODES.get(s, 2) for s in ("healthy", "degraded", "unhealthy", "whatever")] == [0, 1, 2, 2]


def test_caption_says_which_services_the_report_covers():
    assert services_caption({"services_from": "serve"}) == "services: as deployed on Serve"
    assert "GATEWAY_EXPECTED_SERVICES" in services_caption({"services_from": "settings"})
    assert services_caption({}) is None  # an older gateway's report
