"""Prove the lab's topology (built by tests/lab/up.sh).

The runner (this host) reaches the bastion's sshd and nothing behind it; the
database is reachable only from inside the bastion namespace, i.e. through an
SSH forward. Plain pytest, no asyncio; reads LAB_DIR/lab.json.
"""

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

LAB_DIR = Path(os.environ.get("LAB_DIR", "/var/lib/bastion-migrate-lab"))


@pytest.fixture(scope="module")
def lab():
    path = LAB_DIR / "lab.json"
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `bash tests/lab/up.sh` first")
    return json.loads(path.read_text())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_ns(ns, *argv, **kwargs):
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 15)
    return subprocess.run(["ip", "netns", "exec", ns, *argv], **kwargs)


def psql_bin():
    for candidate in ("/usr/lib/postgresql/15/bin/psql", shutil.which("psql")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("psql not found")


def wait_for_port(port, proc, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class SshForward:
    """OpenSSH `ssh -N -L` to the lab DB, optionally through sshpass (-e/-P)."""

    def __init__(self, lab, user, known_hosts_line, extra_args=(), sshpass_env=None, sshpass_prompt=None):
        self.lab = lab
        self.port = free_port()
        self.tmp = tempfile.TemporaryDirectory(prefix="bmlab-test-")
        kh = Path(self.tmp.name) / "known_hosts"
        kh.write_text(known_hosts_line + "\n")
        argv = [
            "ssh",
            "-F",
            "/dev/null",
            "-N",
            "-o",
            f"UserKnownHostsFile={kh}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "IdentitiesOnly=yes",
            "-p",
            str(lab["ssh_port"]),
            "-L",
            f"127.0.0.1:{self.port}:{lab['db_host']}:{lab['db_port']}",
            *extra_args,
            f"{user}@{lab['bastion_host']}",
        ]
        env = dict(os.environ)
        if sshpass_env is not None:
            # The secret goes through the environment (sshpass -e), never argv.
            env["SSHPASS"] = sshpass_env
            prefix = ["sshpass", "-e"]
            if sshpass_prompt:
                prefix += ["-P", sshpass_prompt]
            argv = prefix + argv
        self._closed = False
        self._stderr = ""
        self.proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def ready(self):
        return wait_for_port(self.port, self.proc)

    def stderr(self):
        self.close()
        return self._stderr

    def close(self):
        if self._closed:
            return
        self._closed = True
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, self._stderr = self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, self._stderr = self.proc.communicate(timeout=5)
        self.tmp.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def psql_select_1(lab, port):
    env = dict(os.environ, PGPASSWORD=lab["db_password"], PGCONNECT_TIMEOUT="5")
    dsn = f"host=127.0.0.1 port={port} user={lab['db_user']} dbname={lab['db_name']} sslmode=require"
    return subprocess.run([psql_bin(), dsn, "-qAtc", "select 1"], env=env, capture_output=True, text=True, timeout=15)


# ------------------------------------------------------------------ topology


def test_runner_cannot_reach_db_directly(lab):
    # Trap: the default route goes through a transparent proxy that accepts
    # any TCP connection (and then answers "HTTP/1.1 400"), so "connected"
    # would not mean "reached postgres". The lab routes the private range to
    # the bastion, which does not forward: the connect must time out or fail.
    start = time.monotonic()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(3)
    answer = b""
    try:
        sock.connect((lab["db_host"], lab["db_port"]))
    except OSError:
        connected = False  # timeout (dropped by the bastion) or unreachable
    else:
        connected = True
        try:  # show who answered
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            answer = sock.recv(64)
        except OSError:
            pass
    finally:
        sock.close()
    assert not connected, f"the runner reached {lab['db_host']}:{lab['db_port']} directly (answer: {answer!r})"
    assert time.monotonic() - start < 5

    route = subprocess.run(["ip", "route", "get", lab["db_host"]], capture_output=True, text=True, check=True)
    assert f"via {lab['bastion_host']}" in route.stdout, route.stdout


def test_bastion_speaks_ssh(lab):
    with socket.create_connection((lab["bastion_host"], lab["ssh_port"]), timeout=3) as sock:
        sock.settimeout(3)
        banner = sock.recv(256)
    assert banner.startswith(b"SSH-2.0-OpenSSH"), banner


def test_db_reachable_from_bastion_namespace(lab):
    code = f"import socket, sys; socket.create_connection(({lab['db_host']!r}, {lab['db_port']}), timeout=3).close()"
    result = in_ns(lab["bastion_ns"], sys.executable, "-c", code)
    assert result.returncode == 0, result.stderr


def test_forwarding_off_in_bastion(lab):
    result = in_ns(lab["bastion_ns"], "cat", "/proc/sys/net/ipv4/ip_forward", check=True)
    assert result.stdout.strip() == "0"


def test_private_namespace_has_no_route_to_runner(lab):
    result = in_ns(lab["private_ns"], "ip", "route", "get", lab["bastion_host"])
    assert result.returncode != 0, result.stdout


def test_db_admin_argv_works(lab):
    result = subprocess.run(
        lab["db_admin_argv"] + ["-c", "SELECT current_user"], capture_output=True, text=True, timeout=15
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "postgres"


# ----------------------------------------------------------------- ssh paths


def test_password_forward_reaches_postgres(lab):
    with SshForward(
        lab,
        lab["ssh_password_user"],
        lab["ssh_known_hosts"],
        extra_args=["-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password"],
        sshpass_env=lab["ssh_password"],
    ) as fwd:
        assert fwd.ready(), fwd.stderr()
        result = psql_select_1(lab, fwd.port)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "1"


def test_key_forward_reaches_postgres(lab):
    with SshForward(
        lab,
        lab["ssh_key_user"],
        lab["ssh_known_hosts"],
        extra_args=["-o", "BatchMode=yes", "-i", lab["ssh_private_key_path"]],
    ) as fwd:
        assert fwd.ready(), fwd.stderr()
        result = psql_select_1(lab, fwd.port)
        assert result.returncode == 0, result.stderr


def test_encrypted_key_opens_with_passphrase(lab):
    with SshForward(
        lab,
        lab["ssh_key_user"],
        lab["ssh_known_hosts"],
        extra_args=["-o", "PreferredAuthentications=publickey", "-i", lab["ssh_encrypted_key_path"]],
        sshpass_env=lab["ssh_key_passphrase"],
        sshpass_prompt="Enter passphrase",
    ) as fwd:
        assert fwd.ready(), fwd.stderr()


def test_wrong_host_key_is_rejected(lab):
    with SshForward(
        lab,
        lab["ssh_password_user"],
        lab["ssh_wrong_known_hosts"],
        extra_args=["-o", "PubkeyAuthentication=no"],
        sshpass_env=lab["ssh_password"],
    ) as fwd:
        fwd.proc.wait(timeout=10)
        assert fwd.proc.returncode != 0
        assert "Host key verification failed" in fwd.stderr()


def test_known_hosts_and_fingerprints_match(lab):
    with tempfile.TemporaryDirectory() as tmp:
        for line_key, fp_key in (
            ("ssh_known_hosts", "ssh_host_fingerprint"),
            ("ssh_wrong_known_hosts", "ssh_wrong_host_fingerprint"),
        ):
            path = Path(tmp) / line_key
            path.write_text(lab[line_key] + "\n")
            out = subprocess.run(["ssh-keygen", "-lf", str(path)], capture_output=True, text=True, check=True)
            assert out.stdout.split()[1] == lab[fp_key]
            assert lab[line_key].startswith(f"{lab['bastion_host']} ssh-ed25519 ")
    assert lab["ssh_host_fingerprint"] != lab["ssh_wrong_host_fingerprint"]
    scan = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", "-T", "3", lab["bastion_host"]], capture_output=True, text=True, timeout=10
    )
    assert lab["ssh_known_hosts"] in scan.stdout.splitlines()


# ------------------------------------------------------------------ registry


def test_registry_requires_auth_over_tls(lab):
    ca = Path("/etc/docker/certs.d") / lab["registry"] / "ca.crt"
    ctx = ssl.create_default_context(cafile=str(ca))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx))
    with pytest.raises(urllib.error.HTTPError) as err:
        opener.open(f"https://{lab['registry']}/v2/", timeout=5)
    err.value.close()
    assert err.value.code == 401
