# shellcheck shell=bash
# /ping while the worker builds or unpacks its runtime: RunPod's load balancer reads 204 as
# "initialising" and 200 as ready, and a port that refuses connections as a dead worker. The image has
# no Python yet at that point, so socat (one process per connection) runs this file's responder.
# Sourced by the entrypoint for health_start/health_stop; run as a script for one request.

HEALTH_PIDS=() HEALTH_PORTS=()
declare -F log >/dev/null || log() { printf '[launcher] %s\n' "$*" >&2; }

# health_start WHAT: answer on PORT (and PORT_HEALTH when it differs) until health_stop.
health_start() {
  local what=$1 port parent=$$ host=${TRYON_HOST:-0.0.0.0} self seen=" "
  self=${BASH_SOURCE[0]}
  health_stop
  if ! command -v socat >/dev/null 2>&1; then
    log "warning: socat is missing, so /ping goes unanswered while this worker is $what its runtime: install socat (the launcher image has it)"
    return 0
  fi
  for port in "${PORT:-7860}" ${PORT_HEALTH:+"$PORT_HEALTH"}; do
    [[ "$seen" == *" $port "* ]] && continue  # PORT_HEALTH == PORT
    seen="$seen$port "
    if health_port_busy "$port"; then
      log "warning: port $port is already in use, so /ping goes unanswered there while this worker is $what its runtime"
      continue
    fi
    # A watcher owns each socat: it ends it when health_stop asks or when the launcher is gone (even
    # after kill -9), so no responder outlives the worker it speaks for.
    (
      cd / || exit 0  # hold no folder of the worker's open (a local disk may be unmounted)
      trap 'kill "$listener" 2>/dev/null; exit 0' TERM
      socat "TCP-LISTEN:$port,bind=$host,reuseaddr,fork" "EXEC:bash $self respond $what" </dev/null >/dev/null 2>&1 &
      listener=$!
      while kill -0 "$parent" 2>/dev/null && kill -0 "$listener" 2>/dev/null; do
        sleep 1 &
        wait $! || true
      done
      kill "$listener" 2>/dev/null
    ) </dev/null >/dev/null 2>&1 &
    HEALTH_PIDS+=($!)
    HEALTH_PORTS+=("$port")
  done
  return 0
}

# Stops the responders and returns once their ports take no connection (the app binds them next).
health_stop() {
  local pid port tries
  for pid in "${HEALTH_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${HEALTH_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  for port in "${HEALTH_PORTS[@]}"; do
    for ((tries = 0; tries < 50; tries++)); do
      health_port_busy "$port" || break
      sleep 0.05
    done
  done
  HEALTH_PIDS=() HEALTH_PORTS=()
  return 0
}

# Something accepts connections on this port (bash's /dev/tcp: no other tool needed).
health_port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# One request on stdin/stdout: GET or HEAD /ping -> 204, anything else -> 503 in the app's error shape.
health_respond() {
  local what=$1 method="" target="" line body
  IFS=' ' read -r -t 5 method target _ || true
  while IFS= read -r -t 5 line; do
    line=${line%$'\r'}
    [ -n "$line" ] || break
  done
  if [[ "${target%%\?*}" == /ping ]] && [[ "$method" == GET || "$method" == HEAD ]]; then
    printf 'HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n'
    return 0
  fi
  body="{\"error\": {\"code\": \"starting\", \"message\": \"the worker is $what its runtime; retry in a few seconds\"}}"
  printf 'HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %s\r\nRetry-After: 10\r\nConnection: close\r\n\r\n' "${#body}"
  [ "$method" = HEAD ] || printf '%s' "$body"
}

if [ "${BASH_SOURCE[0]}" = "$0" ] && [ "${1:-}" = respond ]; then
  health_respond "${2:-starting}"
fi
