#!/bin/bash
# Entrypoint of the gateway image: Envoy with gateway/envoy.container.yaml, as uid 1000.
#
#   serve    (the default) run Envoy; SIGTERM first drains in-flight requests, then stops it
#   health   exit 0 when the gateway answers /readyz with 200 (the image's HEALTHCHECK)
#
# It starts as root only to hand /dev/stdout and /dev/stderr to the gateway user (the access
# log is /dev/stdout, and a non-root process cannot reopen a pipe that root owns), then drops
# to that user with setpriv, as the official Envoy image's own entrypoint does. The base image
# needs bash, coreutils and setpriv (util-linux) and no Python, nor curl.
set -euo pipefail

CONFIG=/etc/envoy/envoy.yaml
LISTEN_PORT=8080   # as rendered into envoy.container.yaml (docker/gateway.env)
ADMIN_PORT=9901    # loopback only inside the container
GATEWAY_UID=${GATEWAY_UID:-1000}
DRAIN_TIMEOUT_S=${GATEWAY_DRAIN_TIMEOUT_S:-40}

# http METHOD PORT PATH: one HTTP/1.1 request to 127.0.0.1, the whole response on stdout.
http() {
    local fd
    exec {fd}<>"/dev/tcp/127.0.0.1/$2" || return 1
    printf '%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$1" "$3" >&"$fd"
    timeout 5 cat <&"$fd" || true
    exec {fd}>&-
}

health() {
    local response
    response=$(http GET "$LISTEN_PORT" /readyz 2>/dev/null) || exit 1
    [[ $response == "HTTP/1.1 200"* ]] || exit 1
}

active_requests() {
    http GET "$ADMIN_PORT" '/stats?filter=llm_gateway.downstream_rq_active' \
        | sed -n 's/^http\.llm_gateway\.downstream_rq_active: *\([0-9]*\).*/\1/p'
}

# Refuse new requests with 503 (the drain switch in the gateway config; /readyz fails too),
# let requests in flight finish (bounded), then stop Envoy. Same steps as tools/serve.py.
drain_and_stop() {
    local deadline=$((SECONDS + DRAIN_TIMEOUT_S)) active
    echo "llm-gateway: draining (at most ${DRAIN_TIMEOUT_S} s)" >&2
    http POST "$ADMIN_PORT" '/runtime_modify?llm.draining=100' >/dev/null 2>&1 || true
    while ((SECONDS < deadline)); do
        active=$(active_requests 2>/dev/null || true)
        [[ ${active:-0} == 0 ]] && break
        sleep 0.5
    done
    echo "llm-gateway: ${active:-0} requests still active; stopping Envoy" >&2
    kill -TERM "$envoy_pid" 2>/dev/null || true
    wait "$envoy_pid" || true
}

# GATEWAY_GLOBAL_LIMITS=1: ask the rate-limit service (compose profile `global-limits`), whose
# address the baked config holds, by switching runtime key llm.global_limits on once the
# admin port answers.
enable_global_limits() {
    local tries
    for tries in $(seq 1 100); do
        if http POST "$ADMIN_PORT" '/runtime_modify?llm.global_limits=100' \
                | grep -q '^HTTP/1.1 200'; then
            echo "llm-gateway: global limits on (attempt $tries)" >&2
            return 0
        fi
        sleep 0.2
    done
    echo "llm-gateway: could not switch global limits on" >&2
}

serve() {
    if [[ $(id -u) == 0 ]]; then
        chown "$GATEWAY_UID:$GATEWAY_UID" /dev/stdout /dev/stderr
        exec setpriv --reuid="$GATEWAY_UID" --regid="$GATEWAY_UID" --clear-groups \
            --no-new-privs "$0" serve
    fi
    # The flags of runtime.envoy_command (make serve); Envoy's level from LLM_LOG_LEVEL alike.
    local level=${LLM_LOG_LEVEL:-info}
    case $level in verbose) level=info ;; info) level=warning ;; esac
    stopping=
    trap 'stopping=1' TERM INT
    envoy -c "$CONFIG" --log-level "$level" --disable-hot-restart --drain-time-s 5 \
        --file-flush-interval-msec 500 &
    envoy_pid=$!
    if [[ ${GATEWAY_GLOBAL_LIMITS:-0} == 1 ]]; then enable_global_limits & fi
    local rc=0
    wait "$envoy_pid" || rc=$?
    if [[ -n $stopping ]]; then
        drain_and_stop
        exit 0
    fi
    exit "$rc"  # Envoy ended by itself: let the restart policy act
}

case ${1:-serve} in
    serve) serve ;;
    health) health ;;
    *) echo "usage: $0 [serve|health]" >&2; exit 2 ;;
esac
