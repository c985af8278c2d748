#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# The worker's start: ready the Python runtime from the network volume, then exec the app.
#
# A venv used in place on a network filesystem pays a round trip for every file open and stat
# (thousands per `import torch`). So the runtime (uv-managed Python + venv) is built once on local
# disk, published on the volume as an archive in parts (lib/store.sh), and every later worker unpacks
# it to local disk in one parallel sequential read (lib/archive.sh). Correctness does not rest on the
# build lock (lib/lock.sh): every build publishes under its own name, the manifest naming it is
# renamed into place last, and a worker unpacks only what matches the manifest that named it. While a
# worker builds or unpacks, /ping answers 204 (lib/health.sh) so a load balancer sees it starting.
#
# Usage: entrypoint.sh [--plan | --build-only] [APP ARGS...]   (APP ARGS default to "serve")
#   --plan        print what would happen and change nothing
#   --build-only  build and publish the runtime for this key (or find it published), then exit: run it
#                 on any Linux x86_64 machine with the volume attached (`just build-runtime BACKEND=cu128`)
set -euo pipefail

FORMAT_VERSION=2
LAUNCHER_DIR=${BASH_SOURCE[0]%/*}
[[ "${BASH_SOURCE[0]}" == */* ]] || LAUNCHER_DIR=.
LAUNCHER_DIR=$(cd "$LAUNCHER_DIR" && pwd)
IMAGE_APP_DIR=${LAUNCHER_DIR%/*}
FAILPOINT_PHASES="locked venv-built installed packing packed archive-published manifest-published unpacking"

log() { printf '[launcher] %s\n' "$*" >&2; }
die() { printf '[launcher] error: %s\n' "$*" >&2; exit 1; }
# A warm start is on every worker's critical path: what runs on it uses bash's own clock, names and
# strings rather than a process per value (bench/launcher_bench.py warm measures it).
now() { local t=${EPOCHREALTIME/,/.}; printf '%s' "$t"; }  # seconds.microseconds (a locale may write a comma)
since() {  # seconds since a now() value, to a tenth
  local a=${1/./} b=${EPOCHREALTIME/[.,]/} tenths
  tenths=$(( (10#$b - 10#$a) / 100000 ))
  printf '%d.%d' $((tenths / 10)) $((tenths % 10))
}
mib() { awk -v n="$1" 'BEGIN { printf "%.1f MiB", n / 1048576 }'; }
# Small inputs (the key) on the warm path: coreutils starts faster than openssl (lib/archive.sh's sha256_stream).
sha256_of() { local sum; sum=$(sha256sum); printf '%s' "${sum%% *}"; }
host_name() { printf '%s' "${HOSTNAME:-$(uname -n)}"; }  # slim images may lack the hostname command

# shellcheck source=lib/lock.sh
. "$LAUNCHER_DIR/lib/lock.sh"
# shellcheck source=lib/store.sh
. "$LAUNCHER_DIR/lib/store.sh"
# shellcheck source=lib/archive.sh
. "$LAUNCHER_DIR/lib/archive.sh"
# shellcheck source=lib/health.sh
. "$LAUNCHER_DIR/lib/health.sh"
# shellcheck source=lib/python.sh
. "$LAUNCHER_DIR/lib/python.sh"

# -- settings --------------------------------------------------------------------------------------

whole_number() {  # NAME VALUE MIN
  [[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -ge "$3" ] || die "$1=$2 is not valid: use a whole number >= $3"
}

read_settings() {
  ENV_MODE=${TRYON_ENV_MODE:-archive}
  case "$ENV_MODE" in archive | volume) ;; *) die "TRYON_ENV_MODE=$ENV_MODE is not valid: use archive or volume" ;; esac
  PYTHON_SPEC=${TRYON_PYTHON:-3.11}
  TORCH_BACKEND=${TRYON_TORCH_BACKEND:-auto}
  [[ "$TORCH_BACKEND" =~ ^(auto|cpu|none|cu[0-9]+|rocm[0-9.]+|xpu)$ ]] \
    || die "TRYON_TORCH_BACKEND=$TORCH_BACKEND is not valid: use auto, cpu, none or a CUDA backend such as cu128"
  REQUIREMENTS=${TRYON_REQUIREMENTS:-$LAUNCHER_DIR/requirements.txt}
  LOCK_STALE_S=${TRYON_LOCK_STALE_S:-120}
  BUILD_WAIT_S=${TRYON_BUILD_WAIT_S:-3600}
  ENV_KEEP=${TRYON_ENV_KEEP:-2}
  ARCHIVE_PARTS=${TRYON_ARCHIVE_PARTS:-16}
  FAILPOINTS=${TRYON_FAILPOINTS:-}
  # In a container the server must listen on every interface (the app's own default is 127.0.0.1).
  export TRYON_HOST=${TRYON_HOST:-0.0.0.0}
  whole_number TRYON_LOCK_STALE_S "$LOCK_STALE_S" 1
  whole_number TRYON_BUILD_WAIT_S "$BUILD_WAIT_S" 0
  whole_number TRYON_ENV_KEEP "$ENV_KEEP" 1
  whole_number TRYON_ARCHIVE_PARTS "$ARCHIVE_PARTS" 1
  check_failpoints
  [ -f "$REQUIREMENTS" ] || die "requirements file $REQUIREMENTS not found: set TRYON_REQUIREMENTS or restore launcher/requirements.txt"
  if [ -n "${TRYON_LOCAL_DIR:-}" ]; then
    LOCAL_DIR=$TRYON_LOCAL_DIR
  elif [ -w /opt/tryon ] || { [ ! -e /opt/tryon ] && [ -w /opt ]; }; then
    LOCAL_DIR=/opt/tryon
  else
    LOCAL_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/catvton-volume
  fi
}

# TRYON_FAILPOINTS (tests only): PHASE=pause:SECONDS or PHASE=kill, comma-separated. A pause freezes the
# launcher without a heartbeat, as a stopped process or a stalled disk would; kill is kill -9.
check_failpoints() {
  local entry phase action
  for entry in ${FAILPOINTS//,/ }; do
    phase=${entry%%=*} action=${entry#*=}
    [[ " $FAILPOINT_PHASES " == *" $phase "* ]] && [[ "$action" == kill || "$action" =~ ^pause:[0-9.]+$ ]] \
      || die "TRYON_FAILPOINTS entry '$entry' is not valid: use PHASE=pause:SECONDS or PHASE=kill with PHASE one of: $FAILPOINT_PHASES (for tests only)"
  done
}

failpoint() {
  local entry
  for entry in ${FAILPOINTS//,/ }; do
    [ "${entry%%=*}" = "$1" ] || continue
    case "${entry#*=}" in
      kill) log "failpoint $1: killing this launcher (TRYON_FAILPOINTS)"; kill -KILL $$ ;;
      pause:*) log "failpoint $1: frozen for ${entry#*=pause:} s, no heartbeat (TRYON_FAILPOINTS)"; sleep "${entry#*=pause:}" ;;
    esac
  done
  return 0
}

# The volume: TRYON_VOLUME, else the RunPod mounts, else ./volume (made on demand).
resolve_volume() {
  if [ -n "${TRYON_VOLUME:-}" ]; then
    VOLUME=$TRYON_VOLUME
    [ -d "$VOLUME" ] || die "TRYON_VOLUME=$VOLUME does not exist: attach the network volume there, or point TRYON_VOLUME at a folder"
  elif [ -d /runpod-volume ]; then
    VOLUME=/runpod-volume
  elif [ -d /workspace ]; then
    VOLUME=/workspace
  else
    VOLUME=$PWD/volume
    [ "$MODE" = plan ] || mkdir -p "$VOLUME"
  fi
  VOLUME=$(cd "$VOLUME" 2>/dev/null && pwd || printf '%s' "$VOLUME")
  VOLUME_WRITABLE=0
  if [ "$MODE" != plan ] && { [ -d "$VOLUME/envs" ] || mkdir -p "$VOLUME/envs" 2>/dev/null; } \
      && { : > "$VOLUME/envs/.write-test.$$"; } 2>/dev/null; then
    VOLUME_WRITABLE=1
    rm -f "$VOLUME/envs/.write-test.$$"
  fi
}

# -- the GPU and the runtime key -------------------------------------------------------------------

# One nvidia-smi call per start, warm or cold: its answer serves the log and the backend choice.
query_gpu() {
  GPU_INFO="" DRIVER=""
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    GPU_NOTE="no NVIDIA driver visible (nvidia-smi missing): the app will run on the CPU"
  elif ! GPU_INFO=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n1) \
      || ! [[ "$GPU_INFO" =~ ,\ *([0-9]+)\.[0-9.]+\ *, ]]; then
    GPU_NOTE="warning: nvidia-smi failed (${GPU_INFO:-no output}): the GPU may be unusable; check the host driver and the container's GPU access"
    GPU_INFO=""
  else
    DRIVER=${BASH_REMATCH[1]}
    GPU_NOTE="GPU: $GPU_INFO"
  fi
}

# torch's CUDA builds and the oldest driver (major version) each needs: drivers map onto a few
# backends, so five drivers make one or two builds, not five. cu126 runs on any CUDA 12 driver
# (>= 525) through CUDA's minor-version compatibility.
CUDA_BACKENDS="cu130:580 cu128:570 cu126:525"
choose_backend() {
  local entry
  BACKEND=$TORCH_BACKEND
  [ "$TORCH_BACKEND" = auto ] || return 0
  BACKEND=cpu
  [ -n "$DRIVER" ] || return 0
  for entry in $CUDA_BACKENDS; do
    if [ "$DRIVER" -ge "${entry#*:}" ]; then BACKEND=${entry%%:*}; return 0; fi
  done
  BACKEND_NOTE="warning: NVIDIA driver $DRIVER is older than any CUDA build of torch supports (525): using the CPU build; update the host driver"
}

describe_python() {
  if [[ "$PYTHON_SPEC" == */* ]]; then
    [ -x "$PYTHON_SPEC" ] || die "TRYON_PYTHON=$PYTHON_SPEC is not an executable interpreter: give a path to python3 or a version such as 3.11"
    # An interpreter outside the runtime: the same image has it at the same path on every worker.
    python_version_of "$PYTHON_SPEC"
    PYTHON_ID="path:$PYTHON_SPEC $PYTHON_VERSION"
    PYTHON_MANAGED=0
  else
    PYTHON_ID="managed:$PYTHON_SPEC"
    PYTHON_MANAGED=1
  fi
}

# The version of an interpreter given by path. Running it costs a warm start tens of milliseconds, so
# the answer is kept on local disk with the interpreter's identity (device, inode, size, mtime: a
# package upgrade replaces the file) and asked again only when that changes. Sets PYTHON_VERSION;
# main writes the cache once the local folder exists.
PYTHON_VERSION_CACHE=
python_version_of() {
  local exe=$1 id="" line
  id=$(stat -L -c '%d:%i:%s:%Y' -- "$exe" 2>/dev/null) || id=""
  if [ -n "$id" ] && { IFS= read -r line < "$LOCAL_DIR/.python-version"; } 2>/dev/null \
      && [[ "$line" == "$id "*" $exe" ]]; then
    PYTHON_VERSION=${line#"$id "}
    PYTHON_VERSION=${PYTHON_VERSION%" $exe"}
    return
  fi
  PYTHON_VERSION=$("$exe" -c 'import platform; print(platform.python_version())') \
    || die "TRYON_PYTHON=$exe did not start (it could not print its version): give a working python3 or a version such as 3.11"
  [ -z "$id" ] || PYTHON_VERSION_CACHE="$id $PYTHON_VERSION $exe"
}

remember_python_version() {
  [ -n "$PYTHON_VERSION_CACHE" ] || return 0
  { printf '%s\n' "$PYTHON_VERSION_CACHE" > "$LOCAL_DIR/.python-version.$$" \
    && mv -f "$LOCAL_DIR/.python-version.$$" "$LOCAL_DIR/.python-version"; } 2>/dev/null \
    || rm -f "$LOCAL_DIR/.python-version.$$" 2>/dev/null || true
}

# The key names what the runtime is, never where it lives: the venv is relocated when unpacked.
compute_key() {
  choose_backend
  describe_python
  KEY_MATERIAL="format=$FORMAT_VERSION
requirements=$(sha256_of < "$REQUIREMENTS")
python=$PYTHON_ID
backend=$BACKEND
arch=$(uname -m)"
  KEY=$(printf '%s\n' "$KEY_MATERIAL" | sha256_of)
  KEY=${KEY:0:16}
  KEY_DIR=$VOLUME/envs/$KEY
  if [ "$ENV_MODE" = volume ]; then RUNTIME=$VOLUME/venvs/$KEY; else RUNTIME=$LOCAL_DIR/runtime; fi
  STAMP_NAME=.tryon-runtime-key
  local stamp host
  TZ=UTC0 printf -v stamp '%(%Y%m%dT%H%M%SZ)T' -1
  host=$(host_name); host=${host//[^A-Za-z0-9]/-}
  printf -v BUILD_ID '%s-%s-%s-%08x' "$stamp" "${host:0:24}" "$$" "${SRANDOM:-$RANDOM$RANDOM}"
  lock_init
  store_init
}

# The key stamp is written last into the venv: a venv without it (a crashed build) is never used.
runtime_has_key() {
  local stamp=""
  { IFS= read -r stamp < "$1/venv/$STAMP_NAME"; } 2>/dev/null || true
  [ "$stamp" = "$KEY" ] && [ -x "$1/venv/bin/python" ]
}

published() {
  if [ "$ENV_MODE" = volume ]; then runtime_has_key "$RUNTIME"; else find_published; fi
}

# -- uv --------------------------------------------------------------------------------------------

ensure_uv() {
  if command -v uv >/dev/null 2>&1; then UV=$(command -v uv); return; fi
  UV=$LOCAL_DIR/tools/uv/bin/uv
  [ -x "$UV" ] && return
  command -v python3 >/dev/null 2>&1 || die "uv is not installed and there is no python3 to install it with: install uv (it is in the launcher image) and retry"
  log "uv not found: installing it with pip into $LOCAL_DIR/tools/uv (the launcher image ships uv; this is for local runs)"
  python3 -m pip install --quiet --disable-pip-version-check --target "$LOCAL_DIR/tools/uv" uv \
    || die "installing uv with pip failed: install uv yourself (pip install uv) and retry"
}

# -- phases ----------------------------------------------------------------------------------------

# Returns 0 once a runtime is published by someone, 1 when this process holds the lock and must build.
wait_or_lock() {
  local started last_report=0 waited
  started=$(uptime_s)
  while true; do
    published && return 0
    try_lock && return 1
    watch_lock
    if [ "$WATCH_QUIET" -ge "$LOCK_STALE_S" ]; then take_over_lock; continue; fi
    waited=$(($(uptime_s) - started))
    if [ $((waited - last_report)) -ge 10 ]; then
      last_report=$waited
      if lock_is_malformed "$LOCK"; then
        log "no runtime $KEY yet, and ${LOCK##*/} is a stray file, not a lock folder: it is removed once nothing has changed it for ${LOCK_STALE_S} s (${WATCH_QUIET} s so far)"
      elif [ "$WATCH_QUIET" -ge 5 ]; then  # a live builder beats at least every 5 s
        log "waiting for $(describe_owner "$LOCK") to build runtime $KEY: ${waited} s so far; its heartbeat has not moved for ${WATCH_QUIET} s, so it is taken over at ${LOCK_STALE_S} s"
      else
        log "waiting for $(describe_owner "$LOCK") to build runtime $KEY: ${waited} s so far; its heartbeat moved ${WATCH_QUIET} s ago"
      fi
    fi
    [ "$waited" -le "$BUILD_WAIT_S" ] \
      || die "gave up after ${BUILD_WAIT_S} s waiting for $(describe_owner "$LOCK") to build runtime $KEY; check that worker's log and retry (TRYON_BUILD_WAIT_S sets the limit)"
    sleep 1
  done
}

stderr_to() { local file=$1; shift; "$@" 2> "$file"; }

build_runtime() {
  local started target=$1 final=$2
  started=$(now)
  failpoint locked
  ensure_uv
  log "building runtime $KEY in $target (python $PYTHON_SPEC, torch backend $BACKEND)"
  rm -rf "$target"
  mkdir -p "$target" || die "cannot create $target (phase: build): set TRYON_LOCAL_DIR to a writable local folder"
  export UV_CACHE_DIR=${UV_CACHE_DIR:-$LOCAL_DIR/uv-cache} UV_LINK_MODE=copy UV_PYTHON_INSTALL_DIR=$target/python
  local venv_args=(--relocatable --python "$PYTHON_SPEC")
  # A step that fails after a takeover removed this build's folder (volume mode) sets BUILD_LOST: the
  # caller drops the build. (Returning 0 keeps `set -e` in force in here.)
  if [ "$PYTHON_MANAGED" = 1 ]; then
    if ! beating python_install "$UV" "$VOLUME" "$PYTHON_SPEC" "$target/python"; then
      lost_lock && { BUILD_LOST=1; return 0; }
      die "no Python $PYTHON_SPEC for the runtime (phase: build); see the line above"
    fi
    venv_args+=(--managed-python)
  fi
  if ! beating "$UV" venv --quiet "${venv_args[@]}" "$target/venv"; then
    lost_lock && { BUILD_LOST=1; return 0; }
    die "uv venv failed (phase: build, path: $target/venv)"
  fi
  failpoint venv-built
  local install_args=(--python "$target/venv/bin/python" --compile-bytecode -r "$REQUIREMENTS")
  [ "$BACKEND" = none ] || install_args+=(--torch-backend "$BACKEND")
  if [ -d "$VOLUME/wheels" ]; then
    log "using $VOLUME/wheels as an extra wheel source"
    install_args+=(--find-links "$VOLUME/wheels")
  fi
  # uv's messages are held until it ends: after a takeover they are about a folder that is gone, not news.
  local said
  said=$(mktemp)
  if ! beating stderr_to "$said" "$UV" pip install "${install_args[@]}"; then
    if lost_lock; then rm -f "$said"; BUILD_LOST=1; return 0; fi
    cat "$said" >&2
    rm -f "$said"
    die "installing $REQUIREMENTS failed (phase: build, path: $target/venv); see uv's message above"
  fi
  cat "$said" >&2
  rm -f "$said"
  if lost_lock; then BUILD_LOST=1; return 0; fi
  # Where it was built, so a copy elsewhere can be pointed at its own interpreter (relocate_runtime).
  printf '%s\n' "$target" > "$target/venv/.tryon-runtime-root"
  relocate_runtime "$target" "$final"
  printf '%s\n' "$KEY" > "$target/venv/$STAMP_NAME"
  heartbeat_now  # short steps between the long ones beat too: on a loaded machine they add up
  failpoint installed
  log "runtime built in $(since "$started") s"
}

# Volume mode: the venv is used in place at $VOLUME/venvs/<key>; built aside, published by rename.
publish_in_place() {
  local built=$BUILD_DIR/runtime
  mkdir -p "$(dirname "$RUNTIME")"
  if mv -T "$built" "$RUNTIME" 2>/dev/null; then
    log "runtime published in place at $RUNTIME"
  else
    runtime_has_key "$RUNTIME" || die "publishing $RUNTIME failed (phase: publish); check the volume"
    log "another build published $RUNTIME first: using it"
  fi
}

# While this worker builds or unpacks, /ping answers 204 ("starting") for the load balancer.
answer_health() { [ "$MODE" != run ] || health_start "$1"; }

# The runtime for this key, ready at $RUNTIME: warm, unpacked, waited for, or built here.
ready_runtime() {
  if runtime_has_key "$RUNTIME" && { [ "$MODE" != build ] || [ "$ENV_MODE" = volume ] || find_published; }; then
    if [ "$MODE" = build ]; then log "runtime $KEY is already published"
    elif [ "$ENV_MODE" = volume ]; then log "runtime $KEY already on the volume at $RUNTIME (warm start)"
    else log "runtime $KEY already on local disk (warm start)"
    fi
    return
  fi
  for _ in 1 2 3; do
    if [ "$MODE" = build ] && published; then log "runtime $KEY is already published"; return; fi
    if [ "$ENV_MODE" = archive ] && find_published; then
      answer_health unpacking
      restore_runtime && return
      continue  # damaged: moved aside; build it again below
    fi
    [ "$ENV_MODE" = volume ] && runtime_has_key "$RUNTIME" && return
    [ "$VOLUME_WRITABLE" = 1 ] \
      || die "volume $VOLUME is not writable and holds no published runtime $KEY: mount it read-write (RunPod: attach the network volume to this endpoint or pod) or publish the runtime from a machine that can write it (just build-runtime)"
    answer_health building
    wait_or_lock && continue
    # This process holds the lock. Someone may have published between our look and the lock.
    if published; then release_lock; continue; fi
    note_builds
    if [ "$ENV_MODE" = volume ]; then
      BUILD_LOST=0
      build_runtime "$BUILD_DIR/runtime" "$RUNTIME"
      if [ "$BUILD_LOST" = 1 ]; then release_lock; continue; fi  # start on theirs, or wait for it
      publish_in_place
    else
      build_runtime "$RUNTIME" "$RUNTIME"
      publish_build || [ "$MODE" != build ] || die "the runtime was built but not published; see the warning above"
    fi
    # Best effort: other workers delete files under our feet; a cleanup that stops early is no failure.
    sweep_dead_builds || true
    cleanup_volume || log "warning: cleaning up old runtimes on the volume stopped early; the next build retries"
    release_lock
    return
  done
  if [ "$VOLUME_WRITABLE" = 0 ]; then
    die "runtime $KEY failed its check three times in a row (phase: unpack) and volume $VOLUME is read-only here, so the damaged build could not be replaced: publish it again from a machine that can write the volume (just build-runtime), or check the volume's health"
  fi
  die "runtime $KEY failed its check three times in a row (phase: unpack); the damaged copies are in $KEY_DIR/*.bad: check the volume's health"
}

# Leftovers of launchers killed on this machine: partial unpacks and their scratch files.
clean_local_leftovers() {
  local path pid
  for path in "$LOCAL_DIR"/runtime.unpack.* "$LOCAL_DIR"/.sums.* "$LOCAL_DIR"/.manifest.* "$LOCAL_DIR"/src.tmp.* \
      "$LOCAL_DIR"/.parts.* "$LOCAL_DIR"/.pack-errors.* "$LOCAL_DIR"/.python-version.*; do
    [ -e "$path" ] || continue
    pid=${path##*.}
    if ! [[ "$pid" =~ ^[0-9]+$ ]] || kill -0 "$pid" 2>/dev/null; then continue; fi
    rm -rf "$path" && log "removed $path, left by a stopped launcher (pid $pid)"
  done
  [ ! -e "$LOCAL_DIR/runtime.old" ] || rm -rf "$LOCAL_DIR/runtime.old"
}

# The app from the volume when present (so code updates need no new image), else the image's copy;
# copied to local disk either way, so imports never touch the network filesystem.
resolve_app() {
  if [ -f "$VOLUME/app/__main__.py" ]; then
    APP_SOURCE=$VOLUME/app
    APP_ORIGIN=volume
  else
    APP_SOURCE=$IMAGE_APP_DIR/app
    APP_ORIGIN=image
  fi
  [ -f "$APP_SOURCE/__main__.py" ] || die "no app code found: neither $VOLUME/app nor $IMAGE_APP_DIR/app holds __main__.py"
}

stage_app() {
  local target=$LOCAL_DIR/src tmp
  tmp="$target.tmp.$$"
  [ ! -e "$tmp" ] || rm -rf "$tmp"
  mkdir -p "$tmp"
  cp -R "$APP_SOURCE" "$tmp/app"
  rm -rf "$target"
  mv "$tmp" "$target"
  APP_PATH=$target
}

plan() {
  local action heartbeat="no build lock" free
  if lock_is_malformed "$LOCK"; then
    heartbeat="none: $LOCK is a stray file, not a lock folder; a worker that finds no runtime removes it after ${LOCK_STALE_S} s and builds"
  elif [ -d "$LOCK" ]; then
    local token age
    token=$(owner_field "$LOCK" token)
    age=$(( $(date +%s) - $(stat -c %Y "$BUILDS/${token:-none}/heartbeat" 2>/dev/null || stat -c %Y "$LOCK") ))
    heartbeat="held by $(describe_owner "$LOCK"); its heartbeat was last written ${age} s ago (by this machine's clock); waiters take it over after ${LOCK_STALE_S} s without one"
  fi
  if runtime_has_key "$RUNTIME"; then action="start warm (runtime $KEY already at $RUNTIME)"
  elif [ "$ENV_MODE" = archive ] && find_published; then action="unpack build $(manifest_value "$USE_MANIFEST" build) to $RUNTIME"
  elif lock_is_malformed "$LOCK"; then action="remove the stray ${LOCK##*/} after ${LOCK_STALE_S} s, then build runtime $KEY"
  elif [ -d "$LOCK" ]; then action="wait for the build in progress, or take it over when its heartbeat stops"
  elif [ "$ENV_MODE" = archive ]; then action="build runtime $KEY in $RUNTIME and publish it in $KEY_DIR"
  else action="build runtime $KEY and publish it at $RUNTIME"
  fi
  free=$(free_local_bytes "$(existing_parent "$LOCAL_DIR")")
  cat <<EOF
volume:       $VOLUME
mode:         $ENV_MODE
key:          $KEY
key inputs:   $(printf '%s' "$KEY_MATERIAL" | tr '\n' ' ')
gpu:          ${GPU_INFO:-none} (torch backend $BACKEND)
runtime:      $RUNTIME
published:    $(if [ "$ENV_MODE" = archive ] && find_published; then echo "build $(manifest_value "$USE_MANIFEST" build) in $KEY_DIR"; else echo none; fi)
build lock:   $heartbeat
would:        $action
local disk:   $(mib "${free:-0}") free at $LOCAL_DIR
python:       $(if [ "$PYTHON_MANAGED" = 1 ]; then python_plan "$VOLUME" "$PYTHON_SPEC"; else echo "$PYTHON_SPEC (an existing interpreter)"; fi)
uv:           $(command -v uv || echo "not installed: would install it with pip")
app source:   $APP_ORIGIN ($APP_SOURCE)
command:      python -m app ${APP_ARGS[*]} (listening on $TRYON_HOST)
EOF
}

existing_parent() { local p=$1; while [ ! -d "$p" ]; do p=$(dirname "$p"); done; printf '%s' "$p"; }

on_exit() {
  release_lock
  health_stop
}

main() {
  MODE=run
  case "${1:-}" in
    --plan) MODE=plan; shift ;;
    --build-only) MODE=build; shift ;;
  esac
  APP_ARGS=("$@")
  [ ${#APP_ARGS[@]} -gt 0 ] || APP_ARGS=(serve)
  local started
  started=$(now)
  read_settings
  resolve_volume
  query_gpu
  compute_key
  resolve_app
  if [ "$MODE" = plan ]; then plan; return; fi
  log "volume $VOLUME, runtime key $KEY ($ENV_MODE mode, torch backend $BACKEND)"
  log "$GPU_NOTE"
  [ -z "${BACKEND_NOTE:-}" ] || log "$BACKEND_NOTE"
  [ "$VOLUME_WRITABLE" = 1 ] || log "warning: volume $VOLUME is read-only: a published runtime can start, nothing can be built or cleaned"
  { [ -d "$LOCAL_DIR" ] || mkdir -p "$LOCAL_DIR" 2>/dev/null; } && [ -w "$LOCAL_DIR" ] \
    || die "the local folder $LOCAL_DIR cannot be created or written: set TRYON_LOCAL_DIR to a writable folder on local disk"
  remember_python_version
  trap on_exit EXIT
  trap 'exit 143' TERM
  trap 'exit 130' INT
  clean_local_leftovers
  if [ "$MODE" = build ]; then
    ready_runtime
    log "runtime $KEY (torch backend $BACKEND) is published in $VOLUME: workers with this key unpack it"
    # Keep the managed Python's archive on the volume too, so later builds need no internet.
    if [ "$PYTHON_MANAGED" = 1 ]; then
      ensure_uv
      python_fetch "$UV" "$VOLUME" "$PYTHON_SPEC" || log "warning: the managed Python's archive is not on the volume: a later build will need the internet"
    fi
    return
  fi
  ready_runtime
  stage_app
  health_stop
  trap - EXIT TERM INT
  log "starting the app from the $APP_ORIGIN copy after $(since "$started") s in the launcher"
  cd "$LOCAL_DIR"
  # TRYON_RUNTIME_KEY names the compile cache on the volume (app/model/compile_cache.py): compiled kernels fit one runtime.
  export PYTHONPATH="$APP_PATH${PYTHONPATH:+:$PYTHONPATH}" TRYON_VOLUME="$VOLUME" HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TRYON_RUNTIME_KEY="$KEY"
  exec "$RUNTIME/venv/bin/python" -m app "${APP_ARGS[@]}"
}

main "$@"
