# shellcheck shell=bash
# /ping while the worker builds or unpacks its runtime. RunPod's load balancer reads 204 as
# "initialising", 200 as ready, and a port that refuses connections as a dead worker. There is no
# Python yet at that point, so socat listens (one process per connection, so requests never queue
# behind each other) and runs health_respond, below, for each request.
#
# Why socat: Debian's BusyBox builds the small nc, whose `-ll -e` server listens with a fixed backlog
# of 2 (a burst of 20 pings waits out 1 s SYN retries), and its httpd answers unknown paths 404, not
# 503. socat takes a backlog and forks a handler per connection.
#
# Sourced by the entrypoint: defines the health_* functions and HEALTH_* variables, nothing else.

HEALTH_PIDS=()   # one socat per port, while health_start's responders run
HEALTH_PORTS=()
HEALTH_ANSWERING=""  # the <what> they answer with

# health_start WHAT: answer on PORT (and PORT_HEALTH when it differs) until health_stop. Never fails:
# a missing tool or a taken port is a warning, since the worker can start without the answers.
health_start() {
  local what=${1:-starting} host=${TRYON_HOST:-0.0.0.0} listen=TCP4-LISTEN guard=() seen=" " self port pid
  if [ "$what" = "$HEALTH_ANSWERING" ] && [ ${#HEALTH_PIDS[@]} -gt 0 ] \
    && kill -0 "${HEALTH_PIDS[@]}" 2>/dev/null; then
    return 0  # already answering with this phase
  fi
  health_stop
  if ! command -v socat >/dev/null 2>&1; then
    health_warn "socat is not installed, so /ping goes unanswered while this worker is $what its runtime: install it (apt-get install socat)"
    return 0
  fi
  # The kernel sends socat SIGTERM when this shell dies, even by SIGKILL, so no responder outlives
  # the launcher (setpriv is in util-linux, essential on Debian; without it only health_stop ends it).
  if command -v setpriv >/dev/null 2>&1; then guard=(setpriv --pdeathsig TERM); fi
  if [[ "$host" == *:* ]]; then listen=TCP6-LISTEN host="[$host]"; fi
  self=${BASH_SOURCE[0]}
  [[ "$self" == /* ]] || self=$PWD/$self
  for port in "${PORT:-7860}" ${PORT_HEALTH:+"$PORT_HEALTH"}; do
    if [[ "$seen" == *" $port "* ]]; then continue; fi  # PORT_HEALTH == PORT
    seen="$seen$port "
    if [[ ! "$port" =~ ^[0-9]+$ ]]; then
      health_warn "port '$port' is not a number, so /ping goes unanswered there while this worker is $what its runtime"
      continue
    fi
    if health_listening "$port"; then
      health_warn "port $port is already in use, so /ping goes unanswered there while this worker is $what its runtime: stop what listens on it"
      continue
    fi
    # BASH_ENV makes each connection's bash read this file, so no path goes into socat's address.
    # --norc: a bash whose stdin is a socket and whose SHLVL is below 2 (docker sets no SHLVL) takes
    # itself for one started by sshd and skips BASH_ENV: health_respond would be undefined and every
    # /ping reset, as seen in the launcher image (tests/test_image_build.py).
    # nofork: the handler gets the connection itself, not a relay through another socat.
    BASH_ENV=$self HEALTH_WHAT=$what "${guard[@]}" \
      socat "$listen:$port,bind=$host,reuseaddr,fork,backlog=128,max-children=64" \
      "EXEC:bash --norc -c health_respond,nofork" </dev/null >/dev/null 2>&1 &
    pid=$!
    if health_wait_until health_bound_or_gone "$port" "$pid" && kill -0 "$pid" 2>/dev/null; then
      HEALTH_PIDS+=("$pid")
      HEALTH_PORTS+=("$port")
    else
      health_warn "port $port cannot be listened on at $host (taken, or not an address of this machine), so /ping goes unanswered there while this worker is $what its runtime"
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  HEALTH_ANSWERING=$what
  return 0
}

# Stops the responders and returns once their ports are free (the app binds them right after).
# Requests being answered at that moment finish on their own: their handlers hold no listening socket.
health_stop() {
  local pid port
  for pid in "${HEALTH_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${HEALTH_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  for port in "${HEALTH_PORTS[@]}"; do
    health_wait_until health_port_free "$port" || true
  done
  HEALTH_PIDS=() HEALTH_PORTS=() HEALTH_ANSWERING=""
  return 0
}

health_warn() { printf '[launcher] warning: %s\n' "$*" >&2; }

# Whether anything listens on this TCP port, on any address. Read from the kernel's socket tables
# (lines "N: ADDR:PORT REMADDR:REMPORT STATE ...", hex; state 0A is LISTEN): no connection is made,
# which would cost a handler. grep, not bash's read, which would re-read the table for every line.
health_listening() {
  grep -sqE "^ *[0-9]+: [0-9A-F]+:$(printf '%04X' "$1") [0-9A-F]+:[0-9A-F]+ 0A " /proc/net/tcp /proc/net/tcp6
}

health_port_free() { ! health_listening "$1"; }

# PORT PID: socat listens, or has exited (its bind failed).
health_bound_or_gone() { health_listening "$1" || ! kill -0 "$2" 2>/dev/null; }

# COMMAND...: polls it every 20 ms for up to 5 s.
health_wait_until() {
  local tries
  for ((tries = 0; tries < 250; tries++)); do
    "$@" && return 0
    sleep 0.02
  done
  return 1
}

# One request on stdin/stdout (socat runs this per connection): GET or HEAD /ping answers 204,
# everything else 503 in the app's error shape with Retry-After.
health_respond() {
  local LC_ALL=C what=${HEALTH_WHAT:-starting} method="" target="" line length=0 lines=0 body  # C: lengths in bytes
  IFS=' ' read -r -t 5 method target _ || true
  target=${target%$'\r'}
  # Headers up to the blank line, within 5 s of the connection (SECONDS counts from this bash's start);
  # Content-Length says how much body to read away before closing.
  while ((lines++ < 100 && SECONDS < 5)) && IFS= read -r -t 2 line; do
    line=${line%$'\r'}
    [ -n "$line" ] || break
    if [[ "${line,,}" =~ ^content-length:[[:space:]]*([0-9]{1,12})[[:space:]]*$ ]]; then
      length=${BASH_REMATCH[1]}
    fi
  done
  if [ "${target%%\?*}" = /ping ] && { [ "$method" = GET ] || [ "$method" = HEAD ]; }; then
    # No Content-Length: a 204 must not carry one (RFC 9110 8.6), as the app's own /ping.
    printf 'HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n'
  else
    what=${what//\\/\\\\}
    body="{\"error\": {\"code\": \"starting\", \"message\": \"the worker is ${what//\"/\\\"} its runtime; retry in a few seconds\"}}"
    printf 'HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %s\r\n' "${#body}"
    printf 'Retry-After: 10\r\nConnection: close\r\n\r\n'
    [ "$method" = HEAD ] || printf '%s' "$body"
  fi
  # A client still sending a body would see its connection reset, not this answer, if we closed on
  # unread data: read it away (up to the app's default body limit, 30 MB, for at most 10 s).
  if [ "$length" -gt 0 ] && [ "$length" -le 31457280 ]; then
    timeout 10 head -c "$length" >/dev/null 2>&1 || true
  fi
}
