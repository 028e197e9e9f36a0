"""/metrics is not for anyone who can reach the relay: a bearer token, or a bind of its own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from relay_testkit import RelayProcess, http_get, metric


async def test_metrics_without_the_bearer_are_refused(relay: RelayProcess) -> None:
    """Anonymous peer scrapes /metrics (no token, a wrong one) → no counters leak."""
    for headers in ([], ["Authorization: Bearer nope"], ["Authorization: Basic eA=="]):
        status, body = await http_get(relay.port, "/metrics", headers)
        assert status == 401, (headers, status)
        assert "relay_" not in body and "--metrics-token-file" in body
    status, body = await relay.scrape()
    assert status == 200 and metric(body, "relay_agents_online") >= 0
    assert await http_get(relay.port, "/healthz") == (200, "ok\n")  # health stays open


async def test_no_token_file_means_no_metrics_on_the_main_port(start_relay, tmp_path) -> None:
    with socket.socket() as probe:  # a free port for the metrics bind
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    relay = start_relay(tmp_path / "data", ["--metrics-bind", f"127.0.0.1:{port}"])
    status, body = await http_get(relay.port, "/metrics")
    assert status == 404 and "--metrics-bind" in body
    status, body = await http_get(port, "/metrics")  # the private bind needs no token
    assert status == 200 and "relay_connections" in body
    status, _ = await http_get(port, "/v1/client")  # and serves nothing else
    assert status == 404


@pytest.mark.parametrize("mode", [0o644, 0o640])
def test_a_token_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    token = tmp_path / "metrics-token"
    token.write_text("s3cret-metrics-token\n")
    os.chmod(token, mode)
    result = subprocess.run(
        [sys.executable, "-m", "pio_remote.relay", "serve", "--bind", "127.0.0.1:0"]
        + ["--data-dir", str(tmp_path / "data"), "--metrics-token-file", str(token)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert "chmod 600" in result.stderr and "s3cret" not in result.stderr
