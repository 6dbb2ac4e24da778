#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Tear the bastion-migrate test lab down: stop its daemons, delete its
# namespaces (bastion, private, jump), veths, routes and /etc/hosts line.
#   down.sh          keeps LAB_DIR (keys, data, caches) and the docker images
#   down.sh --purge  also deletes LAB_DIR, the lab's docker images, the docker
#                    CA for the registry and the lab's system users
set -euo pipefail
set -E

LAB_SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$LAB_SCRIPT_DIR/config.sh"
source "$LAB_SCRIPT_DIR/lib.sh"

PURGE=0
case "${1:-}" in
    --purge) PURGE=1 ;;
    "") ;;
    *) die "usage: $0 [--purge]" ;;
esac

stop_sshd() {
    stop_pidfile "$LAB_SSH_DIR/sshd.pid"
    stop_pidfile "$LAB_JUMP_SSH_DIR/sshd.pid"
    stop_pidfile "$LAB_FAULT_SSH_DIR/sshd.pid"
}
stop_registry() { stop_pidfile "$LAB_REGISTRY_DIR/registry.pid"; }

stop_postgres() {
    local pidfile="$LAB_PG_DATA/postmaster.pid"
    [[ -s $pidfile ]] && pid_alive "$(head -n1 "$pidfile")" || return 0
    runuser -u postgres -- "$LAB_PG_BIN/pg_ctl" -D "$LAB_PG_DATA" -m fast -w -t 30 stop >/dev/null ||
        stop_pid "$(head -n1 "$pidfile")"
}

# Whatever still runs inside the lab's namespaces (per-connection sshd
# children, a test's helper...) was started for the lab.
kill_ns_processes() {
    local ns pids pid
    for ns in "$LAB_BASTION_NS" "$LAB_PRIVATE_NS" "$LAB_JUMP_NS"; do
        netns_exists "$ns" || continue
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        for pid in $pids; do stop_pid "$pid" 5; done
    done
}

delete_network() {
    ip route del "$LAB_PRIVATE_NET.0/24" 2>/dev/null || true
    ip route del "$LAB_INNER_NET.0/24" 2>/dev/null || true
    ip link del "$LAB_VETH_HOST" 2>/dev/null || true
    ip link del "$LAB_VETH_HOST_JUMP" 2>/dev/null || true
    local ns
    for ns in "$LAB_BASTION_NS" "$LAB_PRIVATE_NS" "$LAB_JUMP_NS"; do
        if netns_exists "$ns"; then ip netns del "$ns"; fi
    done
}

clean_etc_hosts() {
    grep -qF "$LAB_HOSTS_MARKER" /etc/hosts || return 0
    local tmp
    tmp=$(mktemp)
    grep -vF "$LAB_HOSTS_MARKER" /etc/hosts >"$tmp" || true
    cat "$tmp" >/etc/hosts # in place: /etc/hosts may be a bind mount
    rm -f "$tmp"
}

purge_images() {
    if ! docker_ok; then
        log "    docker not running: images left alone"
        return 0
    fi
    local ref
    for ref in "$LAB_IMAGE:$LAB_IMAGE_TAG" "$LAB_BASE_IMAGE"; do
        docker image rm -f "$ref" >/dev/null 2>&1 || true
    done
    docker logout "$LAB_REGISTRY" >/dev/null 2>&1 || true
}

purge_files() {
    rm -rf "$LAB_DOCKER_CERTS_DIR"
    # Safety: only ever a directory that looks like a lab dir.
    [[ -n $LAB_DIR && $LAB_DIR != / ]] || die "refusing to delete LAB_DIR='$LAB_DIR'"
    rm -rf "$LAB_DIR"
}

purge_users() {
    local user
    for user in "$LAB_SSH_PASSWORD_USER" "$LAB_SSH_KEY_USER"; do
        if id -u "$user" >/dev/null 2>&1; then userdel "$user" 2>/dev/null || true; fi
    done
}

main() {
    require_root
    local mode=""
    if ((PURGE)); then mode=" (purge)"; fi
    log "bastion-migrate lab down$mode: prefix=$LAB_PREFIX dir=$LAB_DIR"
    step "stop sshd" stop_sshd
    step "stop registry" stop_registry
    step "stop postgres" stop_postgres
    step "stop leftover namespace processes" kill_ns_processes
    step "delete namespaces, veths, routes" delete_network
    step "/etc/hosts" clean_etc_hosts
    if ((PURGE)); then
        step "purge docker images" purge_images
        step "purge $LAB_DIR" purge_files
        step "purge lab users" purge_users
    fi
    total_time
}

main "$@"
