"""The relay with TLS (`--tls-cert/--tls-key`), checked by clients the way users run
them: a private CA in SSL_CERT_FILE is trusted; a wrong CA or a wrong host name is
refused with an error that says it is about the certificate."""

from __future__ import annotations

import json
import re

import pytest
import trustme
from conftest import Env
from proctools import tls_files

TLS_WORDS = re.compile(r"certificate|TLS|SSL", re.IGNORECASE)


@pytest.fixture
def tls_world(world, tmp_path):
    """The world's relay restarted with a certificate for ``localhost`` from a test CA."""
    cert_file, key_file, ca_file = tls_files(tmp_path, "localhost")
    world.relay.stop()
    world.relay.start(extra=("--tls-cert", str(cert_file), "--tls-key", str(key_file)))
    world.ca_file = ca_file
    return world


def _client(world, tmp_path, label: str, host: str, ca_file) -> Env:
    machine = world.machine(label, "ann")
    machine.extra["PIO_REMOTE_RELAY"] = f"wss://{host}:{world.relay.port}"
    machine.extra["SSL_CERT_FILE"] = str(ca_file)
    return machine


def test_agent_and_client_verify_the_relay_against_a_private_ca(tls_world, tmp_path):
    pi = _client(tls_world, tmp_path, "pi", "localhost", tls_world.ca_file)
    desk = _client(tls_world, tmp_path, "desk", "localhost", tls_world.ca_file)
    tls_world.start_agent(pi, "lab")
    listed = json.loads(desk.cli("agent", "list", "--json-output").stdout)
    assert [a["name"] for a in listed] == ["lab"]


def test_a_relay_certificate_from_another_ca_is_refused(tls_world, tmp_path):
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    desk = _client(tls_world, tmp_path, "desk", "localhost", other)
    result = desk.cli("agent", "list", check=False, timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert TLS_WORDS.search(result.stderr), result.stderr


def test_a_certificate_for_another_host_name_is_refused(tls_world, tmp_path):
    desk = _client(tls_world, tmp_path, "desk", "127.0.0.1", tls_world.ca_file)
    result = desk.cli("agent", "list", check=False, timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert TLS_WORDS.search(result.stderr), result.stderr
