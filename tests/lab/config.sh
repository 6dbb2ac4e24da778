# shellcheck shell=bash disable=SC2034
# Every name, address and credential of the lab. Each one can be overridden
# from the environment, e.g. `LAB_NET=10.77 LAB_PREFIX=xlab bash up.sh`.
# The secrets below are throw-away lab credentials, not real ones.

: "${LAB_PREFIX:=bmlab}"
: "${LAB_DIR:=/var/lib/bastion-migrate-lab}"

# Addressing: LAB_NET=10.231 gives 10.231.1.0/24 (runner <-> bastion),
# 10.231.2.0/24 (bastion <-> private), and for the jump-host path
# 10.231.3.0/24 (runner <-> jump) and 10.231.4.0/24 (jump <-> bastion).
: "${LAB_NET:=10.231}"
: "${LAB_RUNNER_NET:=${LAB_NET}.1}"
: "${LAB_PRIVATE_NET:=${LAB_NET}.2}"
: "${LAB_HOST_IP:=${LAB_RUNNER_NET}.1}"          # host ("runner") side
: "${LAB_BASTION_IP:=${LAB_RUNNER_NET}.2}"       # bastion, runner side
: "${LAB_BASTION_PRIVATE_IP:=${LAB_PRIVATE_NET}.1}" # bastion, private side
: "${LAB_DB_HOST:=${LAB_PRIVATE_NET}.2}"         # private (PostgreSQL)
: "${LAB_HBA_CIDR:=${LAB_NET}.0.0/16}"
: "${LAB_JUMP_NET:=${LAB_NET}.3}"
: "${LAB_INNER_NET:=${LAB_NET}.4}"
: "${LAB_HOST_JUMP_IP:=${LAB_JUMP_NET}.1}"       # host ("runner") side, towards the jump
: "${LAB_JUMP_IP:=${LAB_JUMP_NET}.2}"            # jump, runner side
: "${LAB_JUMP_INNER_IP:=${LAB_INNER_NET}.1}"     # jump, bastion side
: "${LAB_BASTION_INNER_IP:=${LAB_INNER_NET}.2}"  # bastion, jump side (its second address)
# Fault injection (tests/integration/test_faults.py): an address of the bastion whose
# packets the bastion silently drops (a blackholed host: a TCP connect hangs).
: "${LAB_BLACKHOLE_IP:=${LAB_RUNNER_NET}.3}"

# Namespaces and veths (interface names: 15 characters at most).
: "${LAB_BASTION_NS:=${LAB_PREFIX}-bastion}"
: "${LAB_PRIVATE_NS:=${LAB_PREFIX}-private}"
: "${LAB_VETH_HOST:=${LAB_PREFIX}-hb}"           # in the host
: "${LAB_VETH_BASTION_UP:=${LAB_PREFIX}-bh}"     # in bastion, towards host
: "${LAB_VETH_BASTION_DOWN:=${LAB_PREFIX}-bp}"   # in bastion, towards private
: "${LAB_VETH_PRIVATE:=${LAB_PREFIX}-pb}"        # in private
: "${LAB_JUMP_NS:=${LAB_PREFIX}-jump}"
: "${LAB_VETH_HOST_JUMP:=${LAB_PREFIX}-hj}"      # in the host, towards jump
: "${LAB_VETH_JUMP_UP:=${LAB_PREFIX}-jh}"        # in jump, towards host
: "${LAB_VETH_JUMP_DOWN:=${LAB_PREFIX}-jb}"      # in jump, towards bastion
: "${LAB_VETH_BASTION_JUMP:=${LAB_PREFIX}-bj}"   # in bastion, towards jump

# SSH bastion
: "${LAB_SSH_PORT:=22}"
: "${LAB_SSH_PASSWORD_USER:=${LAB_PREFIX}-pw}"
: "${LAB_SSH_PASSWORD:=Bm!lab:pw@bastion#1}"
: "${LAB_SSH_KEY_USER:=${LAB_PREFIX}-key}"
: "${LAB_SSH_KEY_PASSPHRASE:=key pass:phrase@42!}"
: "${LAB_JUMP_SSH_PORT:=22}"                      # jump sshd (same users and keys as the bastion)
# A second sshd on the bastion (same host key, users and keys) for faults: on
# LAB_NOFORWARD_PORT it refuses every forward (AllowTcpForwarding no); on
# LAB_KEEPALIVE_PORT it forwards and drops a silent client after ~2 s (ClientAlive*).
: "${LAB_NOFORWARD_PORT:=2222}"
: "${LAB_KEEPALIVE_PORT:=2223}"

# PostgreSQL
: "${LAB_PG_BIN:=/usr/lib/postgresql/15/bin}"
: "${LAB_DB_PORT:=5432}"
: "${LAB_DB_NAME:=app}"
: "${LAB_DB_USER:=migrator}"
: "${LAB_DB_PASSWORD:=Mi:gr@te/#%pw 1}"
: "${LAB_DB_MAX_CONNECTIONS:=200}"
: "${LAB_DB_CLOSED_PORT:=5433}"   # nothing listens there on the private host (a database that is down)
: "${LAB_DB_SILENT_PORT:=5439}"   # the private host drops packets to it (a database that never answers)
# The server certificate (from the lab CA, LAB_CA_DIR) names LAB_DB_TLS_NAME and LAB_DB_HOST; both names
# below resolve to LAB_DB_HOST through /etc/hosts, which the bastion's namespace shares. The alias is a
# name the certificate does not carry (a verify-full mismatch on the right server).
: "${LAB_DB_TLS_NAME:=db.${LAB_PREFIX}.test}"
: "${LAB_DB_ALIAS_NAME:=db-alias.${LAB_PREFIX}.test}"

# Registry (TLS from a lab CA, htpasswd auth) on the host side of the veth:
# not on 127.0.0.0/8, which dockerd treats as an insecure registry.
: "${LAB_REGISTRY_HOST:=registry.${LAB_PREFIX}.test}"
: "${LAB_REGISTRY_PORT:=5443}"
: "${LAB_REGISTRY_USER:=${LAB_PREFIX}-registry}"
: "${LAB_REGISTRY_PASSWORD:=Reg!stry:pw-2024}"
: "${LAB_REGISTRY:=${LAB_REGISTRY_HOST}:${LAB_REGISTRY_PORT}}"

# Images
: "${LAB_DEBIAN_SUITE:=bookworm}"
: "${LAB_DEBIAN_MIRROR:=http://deb.debian.org/debian}"
: "${LAB_BASE_IMAGE:=${LAB_PREFIX}/base:${LAB_DEBIAN_SUITE}}"
: "${LAB_IMAGE_REPO:=bastion-migrate/sample}"
: "${LAB_IMAGE:=${LAB_REGISTRY}/${LAB_IMAGE_REPO}}"
: "${LAB_IMAGE_TAG:=latest}"

# Runner-side Django ("lightweight" mode)
: "${LAB_PYTHON:=python3}"
: "${LAB_DJANGO_VERSION:=4.2.30}"
: "${LAB_PSYCOPG2_VERSION:=2.9.13}"

# Timeouts (seconds)
: "${LAB_DOCKERD_TIMEOUT:=60}"
: "${LAB_START_TIMEOUT:=30}"

# Debian packages up.sh makes sure of.
LAB_APT_PACKAGES=(openssh-server postgresql docker.io docker-registry apache2-utils
    debootstrap iproute2 iptables openssl sshpass procps psmisc curl make)

# Derived paths (not meant to be overridden one by one).
LAB_SSH_DIR="$LAB_DIR/ssh"
LAB_JUMP_SSH_DIR="$LAB_SSH_DIR/jump"
LAB_FAULT_SSH_DIR="$LAB_SSH_DIR/faults"
LAB_PG_DIR="$LAB_DIR/postgres"
LAB_PG_DATA="$LAB_PG_DIR/data"
LAB_PG_SOCKET_DIR="$LAB_PG_DIR/run"
LAB_PG_LOG="$LAB_PG_DIR/postgres.log"
LAB_REGISTRY_DIR="$LAB_DIR/registry"
LAB_CA_DIR="$LAB_DIR/ca"
LAB_CACHE_DIR="$LAB_DIR/cache"
LAB_VENV="$LAB_DIR/django-venv"
LAB_HOSTS_MARKER="# bastion-migrate-lab:${LAB_PREFIX}"
LAB_DOCKER_CERTS_DIR="/etc/docker/certs.d/${LAB_REGISTRY}"
