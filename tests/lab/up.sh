#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Bring the bastion-migrate test lab up (idempotent). See README.md.
#
#   runner (host) --veth-- [bastion ns: sshd] --veth-- [private ns: PostgreSQL]
#   runner (host) --veth-- [jump ns: sshd] --veth-- [bastion ns]   (jump-host path)
#   + a TLS docker registry on the host side of the first veth
#   + the sample project's production image pushed there
#   + a runner-side Django venv
#
# Writes LAB_DIR/lab.json and LAB_DIR/lab.env for the tests.
set -euo pipefail
set -E

LAB_SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$LAB_SCRIPT_DIR/config.sh"
source "$LAB_SCRIPT_DIR/lib.sh"

LAB_SAMPLE_DIR=$(cd "$LAB_SCRIPT_DIR/../../sample" && pwd)
export PYTHONDONTWRITEBYTECODE=1
export DEBIAN_FRONTEND=noninteractive
umask 022

# ---------------------------------------------------------------- packages --

install_packages() {
    local missing=() pkg created_policy=0
    for pkg in "${LAB_APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    # The runner venv and the info files need a python3 with venv/ensurepip.
    "$LAB_PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3 python3-venv)
    if ((${#missing[@]} == 0)); then
        log "    all installed"
        return 0
    fi
    log "    installing: ${missing[*]}"
    # No systemd here: keep the packages' postinst scripts from starting
    # daemons of their own (a default PostgreSQL cluster, a registry on :5000,
    # a host sshd...). Ours run in the lab's namespaces and addresses.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        created_policy=1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >"/tmp/${LAB_PREFIX}-apt.log" 2>&1 ||
        { tail -n 30 "/tmp/${LAB_PREFIX}-apt.log" >&2; return 1; }
    if ((created_policy)); then rm -f /usr/sbin/policy-rc.d; fi
}

# Debian's own daemons (if a postinst started them anyway): stop them so only
# the lab's run.
stop_package_daemons() {
    local pidfile=/var/run/postgresql/15-main.pid
    if pidfile_alive "$pidfile"; then
        log "    stopping Debian's default PostgreSQL cluster 15/main"
        pg_ctlcluster 15 main stop || true
    fi
    pidfile=/var/run/docker-registry.pid
    if pidfile_alive "$pidfile" && [[ -x /etc/init.d/docker-registry ]]; then
        log "    stopping Debian's default docker-registry (:5000)"
        /etc/init.d/docker-registry stop || true
    fi
}

prepare_dirs() {
    install -d -m 0711 "$LAB_DIR"
    install -d -m 0700 "$LAB_CA_DIR" "$LAB_REGISTRY_DIR" "$LAB_CACHE_DIR" "$LAB_DIR/stamps"
    install -d -m 0711 "$LAB_SSH_DIR" "$LAB_JUMP_SSH_DIR"
    install -d -m 0755 "$LAB_SSH_DIR/authorized_keys"
    install -d -m 0711 "$LAB_PG_DIR"
}

# ----------------------------------------------------------------- network --

ensure_veth() { # HOST_NS(or "") IFACE PEER_NS PEER
    local ns=$1 ifc=$2 peer_ns=$3 peer=$4
    local nsarg=()
    [[ -n $ns ]] && nsarg=(-n "$ns")
    if ip "${nsarg[@]}" link show "$ifc" >/dev/null 2>&1 && ip -n "$peer_ns" link show "$peer" >/dev/null 2>&1; then
        return 0
    fi
    ip "${nsarg[@]}" link del "$ifc" 2>/dev/null || true
    ip "${nsarg[@]}" link add "$ifc" type veth peer name "$peer" netns "$peer_ns"
}

setup_network() {
    local ns
    for ns in "$LAB_BASTION_NS" "$LAB_PRIVATE_NS" "$LAB_JUMP_NS"; do
        netns_exists "$ns" || ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
    ensure_veth "" "$LAB_VETH_HOST" "$LAB_BASTION_NS" "$LAB_VETH_BASTION_UP"
    ensure_veth "$LAB_BASTION_NS" "$LAB_VETH_BASTION_DOWN" "$LAB_PRIVATE_NS" "$LAB_VETH_PRIVATE"

    ip addr replace "$LAB_HOST_IP/24" dev "$LAB_VETH_HOST"
    ip link set "$LAB_VETH_HOST" up
    ip -n "$LAB_BASTION_NS" addr replace "$LAB_BASTION_IP/24" dev "$LAB_VETH_BASTION_UP"
    ip -n "$LAB_BASTION_NS" addr replace "$LAB_BASTION_PRIVATE_IP/24" dev "$LAB_VETH_BASTION_DOWN"
    ip -n "$LAB_BASTION_NS" link set "$LAB_VETH_BASTION_UP" up
    ip -n "$LAB_BASTION_NS" link set "$LAB_VETH_BASTION_DOWN" up
    ip -n "$LAB_PRIVATE_NS" addr replace "$LAB_DB_HOST/24" dev "$LAB_VETH_PRIVATE"
    ip -n "$LAB_PRIVATE_NS" link set "$LAB_VETH_PRIVATE" up

    # The jump-host path: runner <-> jump <-> bastion (a second address on the bastion).
    ensure_veth "" "$LAB_VETH_HOST_JUMP" "$LAB_JUMP_NS" "$LAB_VETH_JUMP_UP"
    ensure_veth "$LAB_JUMP_NS" "$LAB_VETH_JUMP_DOWN" "$LAB_BASTION_NS" "$LAB_VETH_BASTION_JUMP"
    ip addr replace "$LAB_HOST_JUMP_IP/24" dev "$LAB_VETH_HOST_JUMP"
    ip link set "$LAB_VETH_HOST_JUMP" up
    ip -n "$LAB_JUMP_NS" addr replace "$LAB_JUMP_IP/24" dev "$LAB_VETH_JUMP_UP"
    ip -n "$LAB_JUMP_NS" addr replace "$LAB_JUMP_INNER_IP/24" dev "$LAB_VETH_JUMP_DOWN"
    ip -n "$LAB_JUMP_NS" link set "$LAB_VETH_JUMP_UP" up
    ip -n "$LAB_JUMP_NS" link set "$LAB_VETH_JUMP_DOWN" up
    ip -n "$LAB_BASTION_NS" addr replace "$LAB_BASTION_INNER_IP/24" dev "$LAB_VETH_BASTION_JUMP"
    ip -n "$LAB_BASTION_NS" link set "$LAB_VETH_BASTION_JUMP" up

    # A new netns inherits the host's ip_forward (which dockerd sets to 1):
    # the bastion must NOT route between its two legs.
    ip netns exec "$LAB_BASTION_NS" sysctl -qw net.ipv4.ip_forward=0
    ip netns exec "$LAB_PRIVATE_NS" sysctl -qw net.ipv4.ip_forward=0
    ip netns exec "$LAB_JUMP_NS" sysctl -qw net.ipv4.ip_forward=0

    # Trap: the default route goes through a transparent proxy accepting any
    # TCP connection. Send the private range to the (non-forwarding) bastion
    # so a direct runner -> DB connection fails as on a real runner.
    ip route replace "$LAB_PRIVATE_NET.0/24" via "$LAB_BASTION_IP" dev "$LAB_VETH_HOST"
    # Likewise the bastion's inner address is only reachable through the jump's sshd:
    # route it to the (non-forwarding) jump, not to the proxy.
    ip route replace "$LAB_INNER_NET.0/24" via "$LAB_JUMP_IP" dev "$LAB_VETH_HOST_JUMP"
}

# ------------------------------------------------------------------ docker --

start_docker() {
    if docker_ok; then
        log "    dockerd already running"
        return 0
    fi
    log "    starting dockerd (log: $LAB_DIR/dockerd.log)"
    setsid dockerd >>"$LAB_DIR/dockerd.log" 2>&1 </dev/null &
    wait_until "$LAB_DOCKERD_TIMEOUT" "docker info" docker_ok ||
        { tail -n 20 "$LAB_DIR/dockerd.log" >&2; return 1; }
}

# -------------------------------------------------------------- postgresql --

pg_admin() {
    PGOPTIONS='-c client_min_messages=warning' ip netns exec "$LAB_PRIVATE_NS" runuser -u postgres -- "$LAB_PG_BIN/psql" -h "$LAB_PG_SOCKET_DIR" \
        -p "$LAB_DB_PORT" -d postgres -v ON_ERROR_STOP=1 -qAt "$@"
}

pg_running() {
    [[ -s $LAB_PG_DATA/postmaster.pid ]] && pid_alive "$(head -n1 "$LAB_PG_DATA/postmaster.pid")"
}

pg_ready() { "$LAB_PG_BIN/pg_isready" -q -h "$LAB_PG_SOCKET_DIR" -p "$LAB_DB_PORT" -d postgres; }

init_postgres() {
    local tmp="$LAB_PG_DATA.tmp"
    rm -rf "$tmp"
    install -d -o postgres -g postgres -m 0700 "$tmp"
    runuser -u postgres -- "$LAB_PG_BIN/initdb" -D "$tmp" -U postgres -E UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 >"$LAB_PG_DIR/initdb.log" 2>&1 ||
        { cat "$LAB_PG_DIR/initdb.log" >&2; return 1; }
    openssl req -x509 -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -days 3650 \
        -subj "/CN=$LAB_DB_HOST" -addext "subjectAltName=IP:$LAB_DB_HOST" \
        -keyout "$tmp/server.key" -out "$tmp/server.crt" 2>/dev/null
    chown postgres:postgres "$tmp/server.key" "$tmp/server.crt"
    chmod 0600 "$tmp/server.key"
    printf "\ninclude_if_exists = 'lab.conf'\n" >>"$tmp/postgresql.conf"
    mv "$tmp" "$LAB_PG_DATA"
}

start_postgres() {
    ip netns exec "$LAB_PRIVATE_NS" setsid runuser -u postgres -- "$LAB_PG_BIN/postgres" -D "$LAB_PG_DATA" \
        >>"$LAB_PG_LOG" 2>&1 </dev/null &
    wait_until "$LAB_START_TIMEOUT" "postgres to accept connections" pg_ready ||
        { tail -n 20 "$LAB_PG_LOG" >&2; return 1; }
}

stop_postgres() {
    pg_running || return 0
    runuser -u postgres -- "$LAB_PG_BIN/pg_ctl" -D "$LAB_PG_DATA" -m fast -w -t 30 stop >/dev/null
}

setup_postgres() {
    local changed=0
    install -d -o postgres -g postgres -m 0755 "$LAB_PG_SOCKET_DIR"
    touch "$LAB_PG_LOG" && chown postgres:postgres "$LAB_PG_LOG" && chmod 0640 "$LAB_PG_LOG"
    if [[ ! -s $LAB_PG_DATA/PG_VERSION ]]; then
        log "    initdb $LAB_PG_DATA"
        init_postgres
    fi
    write_if_changed "$LAB_PG_DATA/lab.conf" 0600 <<EOF && changed=1
# Written by tests/lab/up.sh
listen_addresses = '$LAB_DB_HOST'
port = $LAB_DB_PORT
unix_socket_directories = '$LAB_PG_SOCKET_DIR'
password_encryption = 'scram-sha-256'
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
max_connections = $LAB_DB_MAX_CONNECTIONS
log_connections = on
EOF
    write_if_changed "$LAB_PG_DATA/pg_hba.conf" 0600 <<EOF && changed=1
# Written by tests/lab/up.sh
# TYPE  DATABASE USER ADDRESS          METHOD
local   all      all                   trust
hostssl all      all  $LAB_HBA_CIDR    scram-sha-256
host    all      all  $LAB_HBA_CIDR    scram-sha-256
EOF
    chown postgres:postgres "$LAB_PG_DATA/lab.conf" "$LAB_PG_DATA/pg_hba.conf"
    make_ca
    LAB_CERT_CHANGED=0
    make_db_cert
    if pg_running && ((LAB_CERT_CHANGED)) && ! ((changed)); then
        # PostgreSQL reads its certificate again on reload: sessions of running tests are kept.
        log "    server certificate changed: reloading postgres"
        pg_admin -c "SELECT pg_reload_conf()" >/dev/null
    fi
    if pg_running && ((changed)); then
        log "    configuration changed: restarting postgres"
        stop_postgres
    fi
    if pg_running && pg_ready; then
        log "    postgres already running"
    else
        log "    starting postgres in $LAB_PRIVATE_NS (log: $LAB_PG_LOG)"
        start_postgres
    fi
    # Role and database; the password is passed as a psql variable (quoted by psql).
    pg_admin -v "user=$LAB_DB_USER" -v "pw=$LAB_DB_PASSWORD" -v "db=$LAB_DB_NAME" <<'SQL'
SELECT NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'user') AS create_role \gset
\if :create_role
CREATE ROLE :"user" LOGIN CREATEDB;
\endif
ALTER ROLE :"user" WITH LOGIN CREATEDB PASSWORD :'pw';
SELECT NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') AS create_db \gset
\if :create_db
CREATE DATABASE :"db" OWNER :"user";
\endif
SQL
}

# --------------------------------------------------------------------- ssh --

ensure_user() {
    local user=$1
    id -u "$user" >/dev/null 2>&1 ||
        useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$user"
}

# keygen FILE [PASSPHRASE]: an ed25519 key, kept if it exists (and opens with PASSPHRASE).
keygen() {
    local file=$1 pass=${2:-} comment
    comment="$(basename "$file")@$LAB_PREFIX"
    if [[ -s $file && -s $file.pub ]] && ssh-keygen -y -P "$pass" -f "$file" >/dev/null 2>&1; then
        return 0
    fi
    rm -f "$file" "$file.pub"
    ssh-keygen -q -t ed25519 -N "$pass" -C "$comment" -f "$file"
    chmod 0600 "$file"
    chmod 0644 "$file.pub"
}

known_hosts_line() { # PUBFILE [ADDRESS [PORT]] (default: the bastion's runner-side address)
    local addr=${2:-$LAB_BASTION_IP} port=${3:-$LAB_SSH_PORT} host
    host=$addr
    [[ $port == 22 ]] || host="[$addr]:$port"
    printf '%s %s\n' "$host" "$(cut -d' ' -f1,2 "$1")"
}

fingerprint() { ssh-keygen -lf "$1" | awk '{print $2}'; }

ssh_banner_ok() { # [ADDRESS PORT [NS]] (default: the bastion from the runner)
    local addr=${1:-$LAB_BASTION_IP} port=${2:-$LAB_SSH_PORT} ns=${3:-}
    # shellcheck disable=SC2016 # expanded by the inner bash
    local cmd=(timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2" && head -c 15 <&3' _ "$addr" "$port")
    if [[ -n $ns ]]; then cmd=(ip netns exec "$ns" "${cmd[@]}"); fi
    "${cmd[@]}" | grep -q '^SSH-2.0-OpenSSH'
}

setup_ssh() {
    local changed=0
    ensure_user "$LAB_SSH_PASSWORD_USER"
    ensure_user "$LAB_SSH_KEY_USER"
    printf '%s:%s\n' "$LAB_SSH_PASSWORD_USER" "$LAB_SSH_PASSWORD" | chpasswd
    # '!' (locked) would make sshd (UsePAM no) refuse even public keys; '*' = no password.
    usermod -p '*' "$LAB_SSH_KEY_USER"

    keygen "$LAB_SSH_DIR/ssh_host_ed25519_key"
    keygen "$LAB_SSH_DIR/wrong_host_ed25519_key"
    keygen "$LAB_SSH_DIR/client_ed25519"
    keygen "$LAB_SSH_DIR/client_ed25519_encrypted" "$LAB_SSH_KEY_PASSPHRASE"
    cat "$LAB_SSH_DIR/client_ed25519.pub" "$LAB_SSH_DIR/client_ed25519_encrypted.pub" |
        write_if_changed "$LAB_SSH_DIR/authorized_keys/$LAB_SSH_KEY_USER" 0644 || true
    known_hosts_line "$LAB_SSH_DIR/ssh_host_ed25519_key.pub" |
        write_if_changed "$LAB_SSH_DIR/known_hosts" 0644 || true
    known_hosts_line "$LAB_SSH_DIR/wrong_host_ed25519_key.pub" |
        write_if_changed "$LAB_SSH_DIR/wrong_known_hosts" 0644 || true
    # The same bastion key, as seen from the jump host (its inner address).
    known_hosts_line "$LAB_SSH_DIR/ssh_host_ed25519_key.pub" "$LAB_BASTION_INNER_IP" |
        write_if_changed "$LAB_SSH_DIR/bastion_inner_known_hosts" 0644 || true

    {
        cat <<EOF
# Written by tests/lab/up.sh: the lab bastion (runs in netns $LAB_BASTION_NS).
ListenAddress $LAB_BASTION_IP:$LAB_SSH_PORT
ListenAddress $LAB_BASTION_INNER_IP:$LAB_SSH_PORT
HostKey $LAB_SSH_DIR/ssh_host_ed25519_key
PidFile $LAB_SSH_DIR/sshd.pid
EOF
        sshd_common_config
    } | write_if_changed "$LAB_SSH_DIR/sshd_config" 0600 && changed=1
    run_sshd sshd "$LAB_BASTION_NS" "$LAB_SSH_DIR" "$changed" bastion_banners_ok
}

bastion_banners_ok() { ssh_banner_ok && ssh_banner_ok "$LAB_BASTION_INNER_IP" "$LAB_SSH_PORT" "$LAB_JUMP_NS"; }

# sshd_common_config: what every lab sshd shares (users, authentication, forwarding, logging).
sshd_common_config() {
    cat <<EOF
UsePAM no
PasswordAuthentication yes
PubkeyAuthentication yes
KbdInteractiveAuthentication no
PermitRootLogin no
AllowTcpForwarding yes
PermitTTY no
X11Forwarding no
AuthorizedKeysFile $LAB_SSH_DIR/authorized_keys/%u
StrictModes no
AllowUsers $LAB_SSH_PASSWORD_USER $LAB_SSH_KEY_USER
MaxStartups 200
MaxSessions 200
LogLevel VERBOSE
EOF
}

# run_sshd NAME NS DIR CHANGED CHECK...: the sshd configured in DIR/sshd_config, running in NS:
# restarted when its configuration CHANGED, started when it is not running or CHECK fails.
run_sshd() {
    local name=$1 ns=$2 dir=$3 changed=$4
    shift 4
    install -d -m 0755 /run/sshd
    /usr/sbin/sshd -t -f "$dir/sshd_config"
    if pidfile_alive "$dir/sshd.pid" && ((changed)); then
        log "    configuration changed: restarting the $name"
        stop_pidfile "$dir/sshd.pid"
    fi
    if pidfile_alive "$dir/sshd.pid" && "$@"; then
        log "    $name already running"
        return 0
    fi
    stop_pidfile "$dir/sshd.pid"
    log "    starting the $name in $ns (log: $dir/sshd.log)"
    ip netns exec "$ns" setsid /usr/sbin/sshd -D -f "$dir/sshd_config" \
        -E "$dir/sshd.log" </dev/null >/dev/null 2>&1 &
    wait_until "$LAB_START_TIMEOUT" "the $name's banner" "$@" || { tail -n 20 "$dir/sshd.log" >&2; return 1; }
}

# A jump host in front of the bastion: its own sshd and host key, the same users and keys.
jump_banner_ok() { ssh_banner_ok "$LAB_JUMP_IP" "$LAB_JUMP_SSH_PORT"; }

setup_jump_ssh() {
    local changed=0 dir=$LAB_JUMP_SSH_DIR
    keygen "$dir/ssh_host_ed25519_key"
    known_hosts_line "$dir/ssh_host_ed25519_key.pub" "$LAB_JUMP_IP" "$LAB_JUMP_SSH_PORT" |
        write_if_changed "$dir/known_hosts" 0644 || true
    {
        cat <<EOF
# Written by tests/lab/up.sh: the lab jump host (runs in netns $LAB_JUMP_NS).
ListenAddress $LAB_JUMP_IP:$LAB_JUMP_SSH_PORT
HostKey $dir/ssh_host_ed25519_key
PidFile $dir/sshd.pid
EOF
        sshd_common_config
    } | write_if_changed "$dir/sshd_config" 0600 && changed=1
    run_sshd "jump sshd" "$LAB_JUMP_NS" "$dir" "$changed" jump_banner_ok
}

# ------------------------------------------------------------------ faults --
# What tests/integration/test_faults.py injects; nothing here touches the
# bastion's main sshd, PostgreSQL or the registry.

# ns_drop NS RULE...: an iptables INPUT DROP rule in namespace NS, added once.
ns_drop() {
    local ns=$1
    shift
    ip netns exec "$ns" iptables -w -C INPUT "$@" -j DROP 2>/dev/null ||
        ip netns exec "$ns" iptables -w -A INPUT "$@" -j DROP
}

setup_fault_network() {
    # A blackholed bastion address: it answers ARP (so the runner's kernel does not
    # report "no route" after 3 s) but the bastion drops every packet to it.
    ip -n "$LAB_BASTION_NS" addr replace "$LAB_BLACKHOLE_IP/24" dev "$LAB_VETH_BASTION_UP"
    ns_drop "$LAB_BASTION_NS" -d "$LAB_BLACKHOLE_IP"
    # A database port that never answers (SYNs dropped on the private host).
    ns_drop "$LAB_PRIVATE_NS" -p tcp -d "$LAB_DB_HOST" --dport "$LAB_DB_SILENT_PORT"
}

fault_banners_ok() {
    ssh_banner_ok "$LAB_BASTION_IP" "$LAB_NOFORWARD_PORT" && ssh_banner_ok "$LAB_BASTION_IP" "$LAB_KEEPALIVE_PORT"
}

setup_fault_ssh() {
    local changed=0 dir=$LAB_FAULT_SSH_DIR
    install -d -m 0711 "$dir"
    # A client key that is in nobody's authorized_keys.
    keygen "$LAB_SSH_DIR/client_unauthorized_ed25519"
    known_hosts_line "$LAB_SSH_DIR/ssh_host_ed25519_key.pub" "$LAB_BASTION_IP" "$LAB_NOFORWARD_PORT" |
        write_if_changed "$dir/noforward_known_hosts" 0644 || true
    known_hosts_line "$LAB_SSH_DIR/ssh_host_ed25519_key.pub" "$LAB_BASTION_IP" "$LAB_KEEPALIVE_PORT" |
        write_if_changed "$dir/keepalive_known_hosts" 0644 || true
    {
        cat <<EOF
# Written by tests/lab/up.sh: the bastion's fault-injection sshd (netns $LAB_BASTION_NS).
ListenAddress $LAB_BASTION_IP:$LAB_NOFORWARD_PORT
ListenAddress $LAB_BASTION_IP:$LAB_KEEPALIVE_PORT
HostKey $LAB_SSH_DIR/ssh_host_ed25519_key
PidFile $dir/sshd.pid
EOF
        sshd_common_config
        cat <<EOF
# A silent client is dropped after about 2 s (the bastion's own dead-peer detection).
ClientAliveInterval 1
ClientAliveCountMax 2
Match LocalPort $LAB_NOFORWARD_PORT
    AllowTcpForwarding no
EOF
    } | write_if_changed "$dir/sshd_config" 0600 && changed=1
    run_sshd "fault sshd" "$LAB_BASTION_NS" "$dir" "$changed" fault_banners_ok
}

# ---------------------------------------------------------------- registry --

registry_status() {
    curl -s -o /dev/null -w '%{http_code}' --noproxy '*' --max-time 3 \
        --cacert "$LAB_CA_DIR/ca.crt" "https://$LAB_REGISTRY/v2/" || true
}
registry_ok() { [[ $(registry_status) == 401 ]]; }

make_ca() {
    [[ -s $LAB_CA_DIR/ca.key && -s $LAB_CA_DIR/ca.crt ]] && return 0
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -days 3650 \
        -subj "/CN=bastion-migrate lab CA ($LAB_PREFIX)" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$LAB_CA_DIR/ca.key" -out "$LAB_CA_DIR/ca.crt" 2>/dev/null
    chmod 0600 "$LAB_CA_DIR/ca.key"
    chmod 0644 "$LAB_CA_DIR/ca.crt"
}

# issue_cert DIR CN SAN: DIR/server.key and DIR/server.crt from the lab CA for SAN, kept when they already
# are; sets LAB_CERT_CHANGED=1 when it issues them.
issue_cert() {
    local dir=$1 cn=$2 san=$3
    if [[ -s $dir/server.key && -s $dir/server.crt ]] &&
        openssl verify -CAfile "$LAB_CA_DIR/ca.crt" "$dir/server.crt" >/dev/null 2>&1 &&
        [[ $(openssl x509 -noout -ext subjectAltName -in "$dir/server.crt" | tail -n1 | tr -d ' ') == "${san//IP:/IPAddress:}" ]]; then
        return 0 # unchanged
    fi
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -subj "/CN=$cn" \
        -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
    openssl x509 -req -in "$dir/server.csr" -CA "$LAB_CA_DIR/ca.crt" -CAkey "$LAB_CA_DIR/ca.key" \
        -CAcreateserial -days 825 -out "$dir/server.crt" \
        -extfile <(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' "$san") \
        2>/dev/null
    rm -f "$dir/server.csr"
    chmod 0600 "$dir/server.key"
    LAB_CERT_CHANGED=1
}

make_registry_cert() {
    local tls="$LAB_REGISTRY_DIR/tls"
    install -d -m 0700 "$tls"
    issue_cert "$tls" "$LAB_REGISTRY_HOST" "DNS:$LAB_REGISTRY_HOST,IP:$LAB_HOST_IP"
}

# The database's certificate, from the lab CA, for its name and address (verify-full works through the tunnel).
# Written in place: PostgreSQL reads it only when it starts or reloads.
make_db_cert() {
    issue_cert "$LAB_PG_DATA" "$LAB_DB_TLS_NAME" "DNS:$LAB_DB_TLS_NAME,IP:$LAB_DB_HOST"
    chown postgres:postgres "$LAB_PG_DATA/server.key" "$LAB_PG_DATA/server.crt"
}

update_etc_hosts() {
    local tmp
    tmp=$(mktemp)
    grep -vF "$LAB_HOSTS_MARKER" /etc/hosts >"$tmp" || true
    printf '%s %s %s\n' "$LAB_HOST_IP" "$LAB_REGISTRY_HOST" "$LAB_HOSTS_MARKER" >>"$tmp"
    # Resolved by the bastion's sshd (its namespace shares /etc/hosts) when it opens the forward.
    printf '%s %s %s %s\n' "$LAB_DB_HOST" "$LAB_DB_TLS_NAME" "$LAB_DB_ALIAS_NAME" "$LAB_HOSTS_MARKER" >>"$tmp"
    # Rewrite in place (not mv): /etc/hosts may be a bind mount.
    cmp -s "$tmp" /etc/hosts || cat "$tmp" >/etc/hosts
    rm -f "$tmp"
}

setup_registry() {
    local changed=0 pidfile="$LAB_REGISTRY_DIR/registry.pid"
    install -d -m 0700 "$LAB_REGISTRY_DIR/data"
    make_ca
    LAB_CERT_CHANGED=0
    make_registry_cert
    changed=$LAB_CERT_CHANGED
    install -d -m 0755 "$LAB_DOCKER_CERTS_DIR"
    install -m 0644 "$LAB_CA_DIR/ca.crt" "$LAB_DOCKER_CERTS_DIR/ca.crt"
    update_etc_hosts
    if ! htpasswd -v -i "$LAB_REGISTRY_DIR/htpasswd" "$LAB_REGISTRY_USER" <<<"$LAB_REGISTRY_PASSWORD" >/dev/null 2>&1; then
        htpasswd -c -i -B "$LAB_REGISTRY_DIR/htpasswd" "$LAB_REGISTRY_USER" <<<"$LAB_REGISTRY_PASSWORD" 2>/dev/null
        chmod 0600 "$LAB_REGISTRY_DIR/htpasswd"
        changed=1
    fi
    write_if_changed "$LAB_REGISTRY_DIR/config.yml" 0600 <<EOF && changed=1
# Written by tests/lab/up.sh
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $LAB_REGISTRY_DIR/data
  delete:
    enabled: true
http:
  addr: $LAB_HOST_IP:$LAB_REGISTRY_PORT
  tls:
    certificate: $LAB_REGISTRY_DIR/tls/server.crt
    key: $LAB_REGISTRY_DIR/tls/server.key
  headers:
    X-Content-Type-Options: [nosniff]
auth:
  htpasswd:
    realm: $LAB_PREFIX-registry
    path: $LAB_REGISTRY_DIR/htpasswd
EOF
    if pidfile_alive "$pidfile" && ((changed)); then
        log "    configuration changed: restarting the registry"
        stop_pidfile "$pidfile"
    fi
    if pidfile_alive "$pidfile" && registry_ok; then
        log "    registry already running"
        return 0
    fi
    stop_pidfile "$pidfile"
    log "    starting registry on $LAB_HOST_IP:$LAB_REGISTRY_PORT (log: $LAB_REGISTRY_DIR/registry.log)"
    setsid /usr/bin/docker-registry serve "$LAB_REGISTRY_DIR/config.yml" \
        >>"$LAB_REGISTRY_DIR/registry.log" 2>&1 </dev/null &
    echo "$!" >"$pidfile"
    wait_until "$LAB_START_TIMEOUT" "registry answering 401 on https://$LAB_REGISTRY/v2/" registry_ok ||
        { tail -n 20 "$LAB_REGISTRY_DIR/registry.log" >&2; return 1; }
}

# ------------------------------------------------------------ django venv --

venv_versions() {
    "$LAB_VENV/bin/python" -c 'import django, psycopg2; print(django.get_version(), psycopg2.__version__.split()[0])' \
        2>/dev/null
}

setup_venv() {
    local want="$LAB_DJANGO_VERSION $LAB_PSYCOPG2_VERSION"
    local pkgs=("Django==$LAB_DJANGO_VERSION" "psycopg2-binary==$LAB_PSYCOPG2_VERSION")
    if [[ -x $LAB_VENV/bin/python && $(venv_versions) == "$want" ]]; then
        log "    $LAB_VENV already has Django $LAB_DJANGO_VERSION, psycopg2 $LAB_PSYCOPG2_VERSION"
        return 0
    fi
    rm -rf "$LAB_VENV"
    if command -v uv >/dev/null 2>&1; then
        log "    uv venv + uv pip install ${pkgs[*]}"
        uv venv -q --python "$(command -v "$LAB_PYTHON")" "$LAB_VENV"
        uv pip install -q --python "$LAB_VENV/bin/python" "${pkgs[@]}"
    else
        log "    python -m venv + pip install ${pkgs[*]}"
        "$LAB_PYTHON" -m venv "$LAB_VENV"
        "$LAB_VENV/bin/python" -m pip install -q --disable-pip-version-check "${pkgs[@]}"
    fi
    [[ $(venv_versions) == "$want" ]] || die "venv has '$(venv_versions)', wanted '$want'"
}

# ------------------------------------------------------------------ images --

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

base_image() {
    local tarball="$LAB_CACHE_DIR/base-$LAB_DEBIAN_SUITE.tar" rootfs="$LAB_CACHE_DIR/rootfs.tmp"
    if image_exists "$LAB_BASE_IMAGE"; then
        log "    $LAB_BASE_IMAGE already in docker"
        return 0
    fi
    if [[ ! -s $tarball ]]; then
        log "    debootstrap $LAB_DEBIAN_SUITE (log: $LAB_CACHE_DIR/debootstrap.log)"
        rm -rf "$rootfs"
        debootstrap --variant=minbase \
            --include=python3,python3-django,python3-psycopg2,python-is-python3,ca-certificates \
            "$LAB_DEBIAN_SUITE" "$rootfs" "$LAB_DEBIAN_MIRROR" >"$LAB_CACHE_DIR/debootstrap.log" 2>&1 ||
            { tail -n 30 "$LAB_CACHE_DIR/debootstrap.log" >&2; return 1; }
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
        tar -C "$rootfs" -cf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        chmod 0600 "$tarball"
        rm -rf "$rootfs"
    else
        log "    re-importing the cached rootfs $tarball"
    fi
    docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
        "$tarball" "$LAB_BASE_IMAGE" >/dev/null
}

sample_hash() {
    local base_id
    base_id=$(docker image inspect -f '{{.Id}}' "$LAB_BASE_IMAGE")
    {
        echo "$base_id"
        (cd "$LAB_SAMPLE_DIR" && find . -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 |
            LC_ALL=C sort -z | xargs -0 sha256sum)
    } | sha256sum | cut -c1-64
}

LAB_HASH_LABEL=org.bastion-migrate.lab.sample-hash

app_image() {
    local ref="$LAB_IMAGE:$LAB_IMAGE_TAG" want have
    want=$(sample_hash)
    have=$(docker image inspect -f "{{ index .Config.Labels \"$LAB_HASH_LABEL\" }}" "$ref" 2>/dev/null || true)
    if [[ $have == "$want" ]]; then
        log "    $ref is up to date with $LAB_SAMPLE_DIR"
        return 0
    fi
    log "    docker build $ref from $LAB_SAMPLE_DIR"
    DOCKER_BUILDKIT=0 docker build -q --build-arg "BASE_IMAGE=$LAB_BASE_IMAGE" \
        --label "$LAB_HASH_LABEL=$want" -t "$ref" "$LAB_SAMPLE_DIR" >/dev/null 2>"$LAB_DIR/docker-build.log" ||
        { cat "$LAB_DIR/docker-build.log" >&2; return 1; }
}

# The digest the registry holds for the image, if any.
registry_digest() {
    local path=${LAB_IMAGE#"$LAB_REGISTRY"/}
    curl -s -I --noproxy '*' --max-time 5 --cacert "$LAB_CA_DIR/ca.crt" -K - \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        "https://$LAB_REGISTRY/v2/$path/manifests/$LAB_IMAGE_TAG" <<EOF |
user = "$LAB_REGISTRY_USER:$LAB_REGISTRY_PASSWORD"
EOF
        tr -d '\r' | awk 'tolower($1) == "docker-content-digest:" {print $2}'
}

push_image() {
    local ref="$LAB_IMAGE:$LAB_IMAGE_TAG" remote local_digests cfg
    remote=$(registry_digest || true)
    local_digests=$(docker image inspect -f '{{range .RepoDigests}}{{println .}}{{end}}' "$ref")
    if [[ -n $remote ]] && grep -qxF "$LAB_IMAGE@$remote" <<<"$local_digests"; then
        log "    registry already has $ref ($remote)"
        return 0
    fi
    # A throw-away docker config, so no credentials stay behind.
    cfg=$(mktemp -d)
    DOCKER_CONFIG=$cfg docker login -u "$LAB_REGISTRY_USER" --password-stdin "$LAB_REGISTRY" \
        <<<"$LAB_REGISTRY_PASSWORD" >/dev/null 2>"$cfg/login.err" ||
        { cat "$cfg/login.err" >&2; rm -rf "$cfg"; return 1; }
    DOCKER_CONFIG=$cfg docker push -q "$ref" >/dev/null || { rm -rf "$cfg"; return 1; }
    DOCKER_CONFIG=$cfg docker logout "$LAB_REGISTRY" >/dev/null
    rm -rf "$cfg"
    log "    pushed $ref ($(registry_digest))"
}

# ---------------------------------------------------------- verify sample --

urlquote() { LAB_Q=$1 python3 -c 'import os, urllib.parse; print(urllib.parse.quote(os.environ["LAB_Q"], safe=""))'; }

verify_sample() {
    local stamp="$LAB_DIR/stamps/sample-verified" want db=${LAB_PREFIX}_verify url out image_id
    image_id=$(docker image inspect -f '{{.Id}}' "$LAB_IMAGE:$LAB_IMAGE_TAG")
    want="$(sample_hash) $(venv_versions) $image_id"
    if [[ -f $stamp && $(<"$stamp") == "$want" ]]; then
        log "    already verified for this sample/venv/image"
        return 0
    fi
    url="postgresql://$(urlquote "$LAB_DB_USER"):$(urlquote "$LAB_DB_PASSWORD")@$LAB_DB_HOST:$LAB_DB_PORT/$db?sslmode=require"
    pg_admin -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db OWNER \"$LAB_DB_USER\""
    manage() {
        (cd "$LAB_SAMPLE_DIR" && ip netns exec "$LAB_BASTION_NS" env SECRET_KEY=lab-verify DATABASE_URL="$url" \
            "$LAB_VENV/bin/python" manage.py "$@")
    }
    log "    runner venv (Django $(venv_versions | cut -d' ' -f1)) from $LAB_BASTION_NS, scratch db $db"
    manage showmigrations >/dev/null
    out=$(manage migrate --plan)
    [[ $(grep -c -E '^(catalog|orders|audit)\.[0-9]{4}_' <<<"$out") == 6 ]] || die "unexpected plan: $out"
    manage migrate -v 0
    out=$(manage showmigrations)
    [[ $(grep -c '\[X\]' <<<"$out") == 6 && $(grep -c '\[ \]' <<<"$out") == 0 ]] || die "not all applied: $out"
    manage migrate orders zero -v 0 # the data migration's reverse function
    manage migrate -v 0
    manage makemigrations --check --dry-run >/dev/null
    pg_admin -c "DROP DATABASE $db"

    log "    image $LAB_IMAGE:$LAB_IMAGE_TAG (Debian's Django)"
    docker run --rm --network none -e SECRET_KEY=lab-verify \
        -e DATABASE_URL=postgresql://nobody@127.0.0.1:1/none "$LAB_IMAGE:$LAB_IMAGE_TAG" \
        sh -ec 'python -c "import django, psycopg2; print(\"    django\", django.get_version())"
                python manage.py showmigrations --help >/dev/null
                python manage.py makemigrations --check --dry-run >/dev/null 2>&1'
    echo "$want" >"$stamp"
}

# -------------------------------------------------------------- info files --

write_info() {
    LAB_SAMPLE_DIR=$LAB_SAMPLE_DIR python3 - <<'PY'
import json, os

e = os.environ
ssh = e["LAB_SSH_DIR"]
jump = e["LAB_JUMP_SSH_DIR"]
faults = e["LAB_FAULT_SSH_DIR"]
def read(path):
    with open(path) as f:
        return f.read().strip()

info = {
    "lab_dir": e["LAB_DIR"],
    "bastion_ns": e["LAB_BASTION_NS"],
    "private_ns": e["LAB_PRIVATE_NS"],
    "bastion_host": e["LAB_BASTION_IP"],
    "ssh_port": int(e["LAB_SSH_PORT"]),
    "ssh_password_user": e["LAB_SSH_PASSWORD_USER"],
    "ssh_password": e["LAB_SSH_PASSWORD"],
    "ssh_key_user": e["LAB_SSH_KEY_USER"],
    "ssh_private_key_path": f"{ssh}/client_ed25519",
    "ssh_encrypted_key_path": f"{ssh}/client_ed25519_encrypted",
    "ssh_key_passphrase": e["LAB_SSH_KEY_PASSPHRASE"],
    "ssh_known_hosts": read(f"{ssh}/known_hosts"),
    "ssh_host_fingerprint": e["LAB_FP"],
    "ssh_wrong_known_hosts": read(f"{ssh}/wrong_known_hosts"),
    "ssh_wrong_host_fingerprint": e["LAB_WRONG_FP"],
    "jump_ns": e["LAB_JUMP_NS"],
    "jump_host": e["LAB_JUMP_IP"],
    "jump_port": int(e["LAB_JUMP_SSH_PORT"]),
    "jump_known_hosts": read(f"{jump}/known_hosts"),
    "jump_host_fingerprint": e["LAB_JUMP_FP"],
    "jump_sshd_pidfile": f"{jump}/sshd.pid",
    "jump_sshd_log": f"{jump}/sshd.log",
    "bastion_inner_host": e["LAB_BASTION_INNER_IP"],
    "bastion_inner_known_hosts": read(f"{ssh}/bastion_inner_known_hosts"),
    "ssh_unauthorized_key_path": f"{ssh}/client_unauthorized_ed25519",
    "blackhole_host": e["LAB_BLACKHOLE_IP"],
    "noforward_port": int(e["LAB_NOFORWARD_PORT"]),
    "noforward_known_hosts": read(f"{faults}/noforward_known_hosts"),
    "keepalive_port": int(e["LAB_KEEPALIVE_PORT"]),
    "keepalive_known_hosts": read(f"{faults}/keepalive_known_hosts"),
    "fault_sshd_pidfile": f"{faults}/sshd.pid",
    "fault_sshd_log": f"{faults}/sshd.log",
    "db_closed_port": int(e["LAB_DB_CLOSED_PORT"]),
    "db_silent_port": int(e["LAB_DB_SILENT_PORT"]),
    "sshd_log": f"{ssh}/sshd.log",
    "sshd_pidfile": f"{ssh}/sshd.pid",
    "db_host": e["LAB_DB_HOST"],
    "db_port": int(e["LAB_DB_PORT"]),
    "db_name": e["LAB_DB_NAME"],
    "db_user": e["LAB_DB_USER"],
    "db_password": e["LAB_DB_PASSWORD"],
    "db_tls_name": e["LAB_DB_TLS_NAME"],
    "db_tls_alias": e["LAB_DB_ALIAS_NAME"],
    "db_ca_path": e["LAB_CA_DIR"] + "/ca.crt",
    "db_admin_argv": [
        "ip", "netns", "exec", e["LAB_PRIVATE_NS"], "runuser", "-u", "postgres", "--",
        e["LAB_PG_BIN"] + "/psql", "-h", e["LAB_PG_SOCKET_DIR"], "-p", e["LAB_DB_PORT"],
        "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qAt",
    ],
    "runner_python": e["LAB_VENV"] + "/bin/python",
    "sample_project": e["LAB_SAMPLE_DIR"],
    "django_settings_module": "sampleproject.settings",
    "registry": e["LAB_REGISTRY"],
    "registry_user": e["LAB_REGISTRY_USER"],
    "registry_password": e["LAB_REGISTRY_PASSWORD"],
    "image": e["LAB_IMAGE"],
    "image_tag": e["LAB_IMAGE_TAG"],
}

def sq(v):
    return "'" + str(v).replace("'", "'\"'\"'") + "'"

lines = ["# Written by tests/lab/up.sh; source it from bash."]
for k, v in info.items():
    if isinstance(v, list):
        import shlex
        v = shlex.join(v)
    if "\n" in str(v):
        continue
    lines.append(f"LAB_{k.upper()}={sq(v)}")

base = e["LAB_DIR"]
for name, text in (("lab.json", json.dumps(info, indent=1) + "\n"), ("lab.env", "\n".join(lines) + "\n")):
    tmp = f"{base}/.{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, f"{base}/{name}")
PY
}

export_for_info() {
    LAB_FP=$(fingerprint "$LAB_SSH_DIR/ssh_host_ed25519_key.pub")
    LAB_WRONG_FP=$(fingerprint "$LAB_SSH_DIR/wrong_host_ed25519_key.pub")
    LAB_JUMP_FP=$(fingerprint "$LAB_JUMP_SSH_DIR/ssh_host_ed25519_key.pub")
    export LAB_FAULT_SSH_DIR LAB_BLACKHOLE_IP LAB_NOFORWARD_PORT LAB_KEEPALIVE_PORT LAB_DB_CLOSED_PORT \
        LAB_DB_SILENT_PORT
    export LAB_JUMP_FP LAB_JUMP_NS LAB_JUMP_IP LAB_JUMP_SSH_PORT LAB_JUMP_SSH_DIR LAB_BASTION_INNER_IP
    export LAB_FP LAB_WRONG_FP LAB_DIR LAB_BASTION_NS LAB_PRIVATE_NS LAB_BASTION_IP LAB_SSH_PORT \
        LAB_SSH_PASSWORD_USER LAB_SSH_PASSWORD LAB_SSH_KEY_USER LAB_SSH_KEY_PASSPHRASE LAB_SSH_DIR \
        LAB_DB_HOST LAB_DB_PORT LAB_DB_NAME LAB_DB_USER LAB_DB_PASSWORD LAB_PG_BIN LAB_PG_SOCKET_DIR \
        LAB_VENV LAB_REGISTRY LAB_REGISTRY_USER LAB_REGISTRY_PASSWORD LAB_IMAGE LAB_IMAGE_TAG \
        LAB_DB_TLS_NAME LAB_DB_ALIAS_NAME LAB_CA_DIR
    write_info
}

# -------------------------------------------------------------------- main --

main() {
    require_root
    log "bastion-migrate lab: prefix=$LAB_PREFIX net=$LAB_NET.0.0/16 dir=$LAB_DIR"
    step "debian packages" install_packages
    step "stop packaged daemons" stop_package_daemons
    step "lab directories" prepare_dirs
    step "network namespaces" setup_network
    step "docker engine" start_docker
    step "postgresql ($LAB_PRIVATE_NS $LAB_DB_HOST:$LAB_DB_PORT)" setup_postgres
    step "sshd ($LAB_BASTION_NS $LAB_BASTION_IP:$LAB_SSH_PORT, $LAB_BASTION_INNER_IP:$LAB_SSH_PORT)" setup_ssh
    step "jump sshd ($LAB_JUMP_NS $LAB_JUMP_IP:$LAB_JUMP_SSH_PORT)" setup_jump_ssh
    step "fault injection: blackholed $LAB_BLACKHOLE_IP, silent db port $LAB_DB_SILENT_PORT" setup_fault_network
    step "fault sshd ($LAB_BASTION_NS $LAB_BASTION_IP:$LAB_NOFORWARD_PORT no forwarding, :$LAB_KEEPALIVE_PORT)" \
        setup_fault_ssh
    step "registry ($LAB_REGISTRY)" setup_registry
    step "runner django venv" setup_venv
    step "base image ($LAB_BASE_IMAGE)" base_image
    step "sample image" app_image
    step "push sample image" push_image
    step "verify sample project" verify_sample
    step "lab info files" export_for_info
    # Tests start logged out of the lab registry.
    docker logout "$LAB_REGISTRY" >/dev/null 2>&1 || true
    total_time
    log "lab is up. Info files:"
    log "  $LAB_DIR/lab.json"
    log "  $LAB_DIR/lab.env"
}

main "$@"
