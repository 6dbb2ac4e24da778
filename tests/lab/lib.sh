# shellcheck shell=bash
# Helpers shared by up.sh and down.sh.

LAB_T0=${EPOCHREALTIME/./}

log() { printf '%s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# Elapsed seconds (two decimals) since the microsecond timestamp $1.
_elapsed() {
    local us=$(( ${EPOCHREALTIME/./} - $1 ))
    printf '%d.%02d' $(( us / 1000000 )) $(( us % 1000000 / 10000 ))
}

LAB_CURRENT_STEP=""
# step NAME CMD...: run one step, print how long it took.
step() {
    local name=$1; shift
    local t0=${EPOCHREALTIME/./}
    LAB_CURRENT_STEP=$name
    log "==> $name"
    "$@"
    log "    $name: done in $(_elapsed "$t0")s"
    LAB_CURRENT_STEP=""
}

total_time() { log "==> total: $(_elapsed "$LAB_T0")s"; }

_on_err() {
    local rc=$?
    printf 'ERROR: command failed (exit %s) at %s:%s%s\n' "$rc" "${BASH_SOURCE[1]:-?}" "${BASH_LINENO[0]:-?}" \
        "${LAB_CURRENT_STEP:+ in step \"$LAB_CURRENT_STEP\"}" >&2
}
trap _on_err ERR

require_root() { [[ $EUID -eq 0 ]] || die "run as root"; }

# Is process PID alive (and not a zombie)?
pid_alive() {
    local pid=$1 state
    [[ -n $pid ]] || return 1
    state=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
    [[ -n $state && $state != Z* ]]
}

pidfile_alive() { [[ -s $1 ]] && pid_alive "$(<"$1")"; }

# wait_until TIMEOUT DESCRIPTION CMD...: poll CMD every 0.1 s.
wait_until() {
    local timeout=$1 what=$2; shift 2
    local deadline=$(( ${EPOCHREALTIME/./} + timeout * 1000000 ))
    until "$@" >/dev/null 2>&1; do
        if (( ${EPOCHREALTIME/./} > deadline )); then
            warn "timed out after ${timeout}s waiting for: $what"
            return 1
        fi
        sleep 0.1
    done
}

# stop_pid PID [TIMEOUT]: TERM, wait, then KILL.
stop_pid() {
    local pid=$1 timeout=${2:-10}
    pid_alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_until "$timeout" "pid $pid to exit" bash -c "! ps -o stat= -p $pid | grep -qv '^Z'"; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
}

stop_pidfile() {
    local pidfile=$1
    if [[ -s $pidfile ]]; then
        stop_pid "$(<"$pidfile")" "${2:-10}"
    fi
    rm -f "$pidfile"
}

# write_if_changed FILE MODE: write stdin to FILE if its content differs.
# Returns 0 when the file was (re)written, 1 when it was already up to date.
write_if_changed() {
    local file=$1 mode=$2 tmp
    tmp=$(mktemp "$file.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        chmod "$mode" "$file"
        return 1
    fi
    mv -f "$tmp" "$file"
    return 0
}

netns_exists() { ip netns list | awk '{print $1}' | grep -qxF "$1"; }

# Is something accepting TCP on HOST PORT (optionally inside namespace NS)?
tcp_open() {
    local host=$1 port=$2 ns=${3:-}
    local cmd=(timeout 2 bash -c "exec 3<>/dev/tcp/$host/$port")
    if [[ -n $ns ]]; then
        ip netns exec "$ns" "${cmd[@]}"
    else
        "${cmd[@]}"
    fi
}

docker_ok() { timeout 10 docker info >/dev/null 2>&1; }
