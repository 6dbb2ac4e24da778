"""Verified TLS to the lab's database through the tunnel: db-sslrootcert with verify-full and verify-ca.

The lab's PostgreSQL presents a certificate from the lab CA naming ``db_tls_name`` and its address;
``db_tls_alias`` resolves to the same server (for the bastion) but is not in the certificate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from certs import make_ca
from support import applied_rows, assert_failed_in, with_docker


@pytest.fixture
def verified(lab: dict[str, Any], base_inputs: dict[str, str]) -> dict[str, str]:
    """A verify-full migrate addressed by the certificate's name, with the lab CA."""
    return {
        **base_inputs,
        "command": "migrate",
        "db-host": lab["db_tls_name"],
        "db-sslmode": "verify-full",
        "db-sslrootcert": Path(lab["db_ca_path"]).read_text(),
    }


def ca_files(workdir: Path) -> list[Path]:
    return sorted(workdir.rglob("bastion-migrate-ca-*"))


@pytest.mark.parametrize("mode", ["lightweight", "docker"])
def test_verify_full_migrates_through_the_tunnel(action, lab, verified, fresh_db, tmp_path, mode) -> None:
    inputs = verified if mode == "lightweight" else with_docker(verified, lab)
    run = action(inputs)
    assert run.returncode == 0, run.explain()
    assert run.outputs["result"] == "success"
    assert applied_rows(lab, fresh_db) == int(run.outputs["applied-count"]) > 0, "Django connected with verify-full"
    shown = f"TLS on, verified as {lab['db_tls_name']}"
    assert shown in run.summary, run.explain()
    assert any(line.startswith("probe: ") and shown in line for line in run.stdout.splitlines()), run.explain()
    assert not ca_files(tmp_path), "the CA file is removed at the end"


def test_verify_ca_accepts_a_name_the_certificate_does_not_carry(action, lab, verified) -> None:
    run = action({**verified, "command": "showmigrations", "db-host": lab["db_tls_alias"], "db-sslmode": "verify-ca"})
    assert run.returncode == 0, run.explain()
    assert "TLS on, CA verified (name not checked)" in run.summary


def test_a_certificate_from_another_ca_fails_the_probe(action, verified) -> None:
    run = action({**verified, "db-sslrootcert": make_ca("not the lab CA").cert})
    assert_failed_in(run, "probe")
    error = run.annotations[0]
    assert "the database's certificate is not signed by db-sslrootcert" in error, run.explain()
    assert "unable to get local issuer certificate" in error


def test_a_name_the_certificate_does_not_carry_fails_the_probe(action, lab, verified) -> None:
    alias = lab["db_tls_alias"]
    run = action({**verified, "db-host": alias})
    assert_failed_in(run, "probe")
    error = run.annotations[0]
    assert f"the database's certificate does not name {alias} (db-host)" in error, run.explain()
    assert "Hostname mismatch" in error


def test_the_address_in_the_certificate_verifies_too(action, lab, verified) -> None:
    run = action({**verified, "command": "probe", "db-host": lab["db_host"]})
    assert run.returncode == 0, run.explain()
    assert f"TLS on, verified as {lab['db_host']}" in run.summary
