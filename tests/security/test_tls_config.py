"""Finding 5: TLS must not fail open. Any partial TLS configuration (a certificate without its
key, a key alone, a CA bundle alone, ...) or an unreadable file refuses to start, naming what
is missing, instead of serving plaintext with a health port that says SERVING."""

import os
import subprocess
from pathlib import Path

import pytest

from app.processes import free_port, shiftrec_command
from services.ingestion.server import build_server
from shared.errors import ConfigurationError
from shared.settings import Settings

PARTIAL = {
    "cert without key": ({"tls_cert_file"}, "SHIFTREC_TLS_KEY_FILE"),
    "key without cert": ({"tls_key_file"}, "SHIFTREC_TLS_CERT_FILE"),
    "CA alone": ({"tls_ca_file"}, "SHIFTREC_TLS_CERT_FILE and SHIFTREC_TLS_KEY_FILE"),
    "cert and CA without key": ({"tls_cert_file", "tls_ca_file"}, "SHIFTREC_TLS_KEY_FILE"),
    "key and CA without cert": ({"tls_key_file", "tls_ca_file"}, "SHIFTREC_TLS_CERT_FILE"),
}


@pytest.mark.parametrize("case", list(PARTIAL))
def test_partial_tls_configuration_refuses_to_start(case: str, tmp_path: Path) -> None:
    fields, missing = PARTIAL[case]
    pem = tmp_path / "some.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'store.db'}", **{f: str(pem) for f in fields})
    with pytest.raises(ConfigurationError, match=f"{missing} not set"):
        build_server(settings, port=0)


def test_unreadable_tls_file_refuses_to_start(tmp_path: Path) -> None:
    pem = tmp_path / "cert.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    absent = tmp_path / "absent-key.pem"
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'store.db'}", tls_cert_file=str(pem),
                        tls_key_file=str(absent))
    with pytest.raises(ConfigurationError, match=f"SHIFTREC_TLS_KEY_FILE={absent}"):
        build_server(settings, port=0)


@pytest.mark.timeout(120)
def test_serve_with_a_ca_file_alone_exits_naming_the_missing_settings(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {**os.environ, "SHIFTREC_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}",
           "SHIFTREC_TLS_CA_FILE": str(ca), "SHIFTREC_HEALTH_PORT": str(free_port()),
           "SHIFTREC_INGESTION_PORT": str(free_port())}
    done = subprocess.run([shiftrec_command(), "serve", "ingestion"], env=env, capture_output=True,
                          text=True, timeout=100, cwd=tmp_path, check=False)
    assert done.returncode != 0
    assert "SHIFTREC_TLS_CERT_FILE and SHIFTREC_TLS_KEY_FILE not set" in done.stderr
