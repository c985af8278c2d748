#!/usr/bin/env bash
# The worker's start: ready the Python runtime from the network volume exactly once, then exec the app.
#
# A venv used in place on a network filesystem pays a round trip for every file open and stat
# (thousands per `import torch`). So the runtime (uv-managed Python + venv) is built once on local
# disk, published on the volume as ONE zstd archive, and every later worker unpacks it to local disk
# in one sequential read. Crash-safe: temporary names, rename into place, manifest written last.
# Concurrency-safe: one builder holds an mkdir lock with a heartbeat; others wait, or take over a
# lock whose heartbeat has stopped. Never flock on the network filesystem.
#
# Usage: entrypoint.sh [--plan] [APP ARGS...]     (APP ARGS default to "serve": python -m app serve)
set -euo pipefail

FORMAT_VERSION=1
LAUNCHER_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
IMAGE_APP_DIR=$(dirname "$LAUNCHER_DIR")

log() { printf '[launcher] %s\n' "$*" >&2; }
die() { printf '[launcher] error: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
mib() { awk -v n="$1" 'BEGIN { printf "%.1f MiB", n / 1048576 }'; }
sha256_of() { sha256sum | cut -c1-64; }
host_name() { uname -n; }  # coreutils: slim images may lack the hostname command

# -- settings --------------------------------------------------------------------------------------

read_settings() {
  ENV_MODE=${TRYON_ENV_MODE:-archive}
  case "$ENV_MODE" in archive | volume) ;; *) die "TRYON_ENV_MODE=$ENV_MODE is not valid: use archive or volume" ;; esac
  PYTHON_SPEC=${TRYON_PYTHON:-3.11}
  TORCH_BACKEND=${TRYON_TORCH_BACKEND:-auto}
  REQUIREMENTS=${TRYON_REQUIREMENTS:-$LAUNCHER_DIR/requirements.txt}
  LOCK_STALE_S=${TRYON_LOCK_STALE_S:-300}
  BUILD_WAIT_S=${TRYON_BUILD_WAIT_S:-3600}
  # In a container the server must listen on every interface (the app's own default is 127.0.0.1).
  export TRYON_HOST=${TRYON_HOST:-0.0.0.0}
  [[ "$LOCK_STALE_S" =~ ^[0-9]+$ && "$LOCK_STALE_S" -ge 1 ]] \
    || die "TRYON_LOCK_STALE_S=$LOCK_STALE_S is not valid: use a whole number of seconds >= 1"
  [[ "$BUILD_WAIT_S" =~ ^[0-9]+$ ]] || die "TRYON_BUILD_WAIT_S=$BUILD_WAIT_S is not valid: use a whole number of seconds"
  [ -f "$REQUIREMENTS" ] || die "requirements file $REQUIREMENTS not found: set TRYON_REQUIREMENTS or restore launcher/requirements.txt"
  if [ -n "${TRYON_LOCAL_DIR:-}" ]; then
    LOCAL_DIR=$TRYON_LOCAL_DIR
  elif [ -w /opt/tryon ] || { [ ! -e /opt/tryon ] && [ -w /opt ]; }; then
    LOCAL_DIR=/opt/tryon
  else
    LOCAL_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/catvton-volume
  fi
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
    [ "$PLAN" = 1 ] || mkdir -p "$VOLUME"
  fi
  VOLUME=$(cd "$VOLUME" 2>/dev/null && pwd || printf '%s' "$VOLUME")
  if [ "$PLAN" = 0 ] && ! { mkdir -p "$VOLUME/envs" 2>/dev/null && touch "$VOLUME/envs/.write-test.$$" 2>/dev/null; }; then
    die "volume $VOLUME is not writable: mount it read-write (RunPod: attach the network volume to this endpoint or pod) or set TRYON_VOLUME to a writable folder"
  fi
  rm -f "$VOLUME/envs/.write-test.$$"
}

# -- the runtime key -------------------------------------------------------------------------------

detect_backend() {
  BACKEND_ID=$TORCH_BACKEND
  if [ "$TORCH_BACKEND" = auto ]; then
    local driver=""
    if command -v nvidia-smi >/dev/null 2>&1; then
      driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n1 | cut -d. -f1 || true)
    fi
    BACKEND_ID=${driver:+auto-driver-$driver}
    BACKEND_ID=${BACKEND_ID:-auto-no-gpu}
  fi
}

# A path runs that interpreter; anything else is a version for a uv-managed Python inside the runtime.
describe_python() {
  if [[ "$PYTHON_SPEC" == */* ]]; then
    [ -x "$PYTHON_SPEC" ] || die "TRYON_PYTHON=$PYTHON_SPEC is not an executable interpreter: give a path to python3 or a version such as 3.11"
    PYTHON_ID="path:$("$PYTHON_SPEC" -c 'import platform, sys; print(platform.python_version(), sys.base_prefix)')"
    PYTHON_MANAGED=0
  else
    PYTHON_ID="managed:$PYTHON_SPEC"
    PYTHON_MANAGED=1
  fi
}

compute_key() {
  detect_backend
  describe_python
  if [ "$ENV_MODE" = volume ]; then
    RUNTIME=$VOLUME  # the venv in place: $VOLUME/venv (and a managed Python in $VOLUME/python)
  else
    RUNTIME=$LOCAL_DIR/runtime
  fi
  local requirements_hash material
  requirements_hash=$(sha256_of < "$REQUIREMENTS")
  material="format=$FORMAT_VERSION
requirements=$requirements_hash
python=$PYTHON_ID
backend=$BACKEND_ID
arch=$(uname -m)"
  # A managed Python lives inside the runtime and a venv names it by absolute path: the path is part of it.
  [ "$PYTHON_MANAGED" = 1 ] && material="$material
runtime=$RUNTIME"
  KEY_MATERIAL=$material
  KEY=$(printf '%s\n' "$material" | sha256_of | cut -c1-16)
  ARCHIVE=$VOLUME/envs/$KEY.tar.zst
  MANIFEST=$VOLUME/envs/$KEY.manifest
  LOCK=$VOLUME/envs/.lock-$KEY
  STAMP_NAME=.tryon-runtime-key
}

# The key stamp is written last into the venv: a venv without it (a crashed build) is never used.
runtime_has_key() { [ "$(cat "$1/venv/$STAMP_NAME" 2>/dev/null)" = "$KEY" ] && [ -x "$1/venv/bin/python" ]; }
published() {
  if [ "$ENV_MODE" = volume ]; then runtime_has_key "$RUNTIME"; else [ -f "$MANIFEST" ] && [ -f "$ARCHIVE" ]; fi
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

# -- the build lock --------------------------------------------------------------------------------

# mkdir is atomic on every filesystem we meet, network ones included.
try_lock() {
  mkdir "$LOCK" 2>/dev/null || return 1
  printf 'host=%s\npid=%s\nstarted=%s\n' "$(host_name)" "$$" "$(date -u +%FT%TZ)" > "$LOCK/owner"
  echo 0 > "$LOCK/heartbeat"
  HEARTBEAT_PID=""
  start_heartbeat
  trap release_lock EXIT
  return 0
}

# The heartbeat is a counter, not a timestamp: waiters judge staleness by their own clock, so clock
# skew between workers does not matter. It stops within one beat when the builder dies (even kill -9).
start_heartbeat() {
  local parent=$$ interval=$((LOCK_STALE_S / 4))
  [ "$interval" -ge 1 ] || interval=1
  (
    beat=0
    while kill -0 "$parent" 2>/dev/null && [ -d "$LOCK" ]; do
      beat=$((beat + 1))
      echo "$beat" > "$LOCK/heartbeat.tmp" 2>/dev/null && mv -f "$LOCK/heartbeat.tmp" "$LOCK/heartbeat" 2>/dev/null
      sleep "$interval"
    done
  ) </dev/null >/dev/null 2>&1 &  # holds none of the app's stdio open
  HEARTBEAT_PID=$!
}

release_lock() {
  if [ -n "${HEARTBEAT_PID:-}" ]; then kill "$HEARTBEAT_PID" 2>/dev/null || true; fi
  HEARTBEAT_PID=""
  rm -rf "$LOCK"
}

lock_owner() { tr '\n' ' ' < "$LOCK/owner" 2>/dev/null || echo "unknown owner"; }

# Rename is atomic: of several workers that find the same stale lock, exactly one moves it away.
take_over_stale_lock() {
  local graveyard
  graveyard="$LOCK.stale.$(host_name).$$"
  if mv "$LOCK" "$graveyard" 2>/dev/null; then
    log "took over a stale build lock ($(tr '\n' ' ' < "$graveyard/owner" 2>/dev/null)): no heartbeat for ${LOCK_STALE_S} s"
    rm -rf "$graveyard"
  fi
}

# Returns 0 once the runtime is published by someone, 1 when this process holds the lock and must build.
wait_or_lock() {
  local started last_beat="" last_change last_report beat waited
  started=$(now); last_change=$(date +%s); last_report=$(date +%s)
  while true; do
    published && return 0
    if try_lock; then
      if published; then release_lock; trap - EXIT; return 0; fi
      return 1
    fi
    beat=$(cat "$LOCK/heartbeat" 2>/dev/null || echo gone)
    if [ "$beat" != "$last_beat" ]; then last_beat=$beat; last_change=$(date +%s); fi
    if [ $(($(date +%s) - last_change)) -ge "$LOCK_STALE_S" ]; then
      take_over_stale_lock
      last_beat=""; last_change=$(date +%s)
      continue
    fi
    waited=$(since "$started")
    if [ $(($(date +%s) - last_report)) -ge 10 ]; then
      log "waiting for $(lock_owner)to build runtime $KEY: ${waited} s so far"
      last_report=$(date +%s)
    fi
    if awk -v w="$waited" -v d="$BUILD_WAIT_S" 'BEGIN { exit !(w > d) }'; then
      die "gave up after ${BUILD_WAIT_S} s waiting for $(lock_owner)to build runtime $KEY; check that worker's log, or remove $LOCK if it is dead, and retry (TRYON_BUILD_WAIT_S sets the limit)"
    fi
    sleep 1
  done
}

# -- phases ----------------------------------------------------------------------------------------

build_runtime() {
  local started target=$1
  started=$(now)
  ensure_uv
  log "building runtime $KEY in $target (python $PYTHON_SPEC, torch backend $BACKEND_ID)"
  rm -rf "$target/venv" "$target/python"
  mkdir -p "$target"
  export UV_CACHE_DIR=${UV_CACHE_DIR:-$LOCAL_DIR/uv-cache} UV_LINK_MODE=copy UV_PYTHON_INSTALL_DIR=$target/python
  local python_arg=$PYTHON_SPEC venv_args=()
  if [ "$PYTHON_MANAGED" = 1 ]; then
    "$UV" python install --quiet "$PYTHON_SPEC" || die "uv could not install Python $PYTHON_SPEC (phase: build, path: $target/python); check network access or set TRYON_PYTHON to an existing interpreter"
    venv_args+=(--managed-python)
  else
    venv_args+=(--relocatable)
  fi
  "$UV" venv --quiet "${venv_args[@]}" --python "$python_arg" "$target/venv" \
    || die "uv venv failed (phase: build, path: $target/venv)"
  local install_args=(--python "$target/venv/bin/python" --compile-bytecode -r "$REQUIREMENTS")
  [ "$TORCH_BACKEND" = none ] || install_args+=(--torch-backend "$TORCH_BACKEND")
  if [ -d "$VOLUME/wheels" ]; then
    log "using $VOLUME/wheels as an extra wheel source"
    install_args+=(--find-links "$VOLUME/wheels")
  fi
  "$UV" pip install "${install_args[@]}" \
    || die "installing $REQUIREMENTS failed (phase: build, path: $target/venv); see uv's message above"
  printf '%s\n' "$KEY" > "$target/venv/$STAMP_NAME"
  log "runtime built in $(since "$started") s"
}

publish_archive() {
  local started tmp size files
  started=$(now)
  tmp="$VOLUME/envs/.$KEY.tar.zst.tmp.$(host_name).$$"
  log "packing runtime to $ARCHIVE"
  tar -C "$RUNTIME" -cf - . | zstd -q -T0 -3 -o "$tmp" \
    || { rm -f "$tmp"; die "packing the runtime failed (phase: pack, path: $tmp); check free space on the volume"; }
  mv -f "$tmp" "$ARCHIVE"
  size=$(stat -c %s "$ARCHIVE")
  files=$(find "$RUNTIME" | wc -l)
  # The manifest is written last: an archive without one is never used.
  printf 'key=%s\nsize=%s\nfiles=%s\nhost=%s\ncreated=%s\n%s\n' "$KEY" "$size" "$files" "$(host_name)" \
    "$(date -u +%FT%TZ)" "$KEY_MATERIAL" > "$MANIFEST.tmp.$$"
  mv -f "$MANIFEST.tmp.$$" "$MANIFEST"
  log "runtime published as one archive ($(mib "$size"), $files files) in $(since "$started") s"
}

unpack_archive() {
  local started expected actual tmp
  started=$(now)
  expected=$(sed -n 's/^size=//p' "$MANIFEST")
  actual=$(stat -c %s "$ARCHIVE")
  [ "$expected" = "$actual" ] || die "archive $ARCHIVE is $actual bytes but its manifest says $expected: the copy is damaged; delete both files and restart to rebuild"
  tmp="$RUNTIME.unpack.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  # zstd checks its frame checksums, so a corrupted archive fails here rather than at import time.
  zstd -q -d -T0 -c "$ARCHIVE" | tar -C "$tmp" -xf - \
    || { rm -rf "$tmp"; die "unpacking $ARCHIVE failed (phase: unpack); delete it and its manifest and restart to rebuild"; }
  [ "$(cat "$tmp/venv/$STAMP_NAME" 2>/dev/null)" = "$KEY" ] \
    || { rm -rf "$tmp"; die "archive $ARCHIVE does not hold runtime $KEY; delete it and its manifest and restart to rebuild"; }
  rm -rf "$RUNTIME.old"
  [ -e "$RUNTIME" ] && mv "$RUNTIME" "$RUNTIME.old"
  mv "$tmp" "$RUNTIME"
  rm -rf "$RUNTIME.old"
  "$RUNTIME/venv/bin/python" -c 'import sys' \
    || die "the unpacked runtime in $RUNTIME does not start; delete $ARCHIVE and its manifest and restart to rebuild"
  log "runtime restored from archive in $(since "$started") s ($(mib "$actual"))"
}

clean_dead_builders() {
  rm -f "$VOLUME/envs/.$KEY.tar.zst.tmp."* "$MANIFEST.tmp."* 2>/dev/null || true
}

ready_runtime() {
  if runtime_has_key "$RUNTIME"; then
    log "runtime $KEY already on local disk (warm start)"
    return
  fi
  if [ "$ENV_MODE" = archive ] && published; then
    unpack_archive
    return
  fi
  if wait_or_lock; then
    if [ "$ENV_MODE" = archive ] && ! runtime_has_key "$RUNTIME"; then unpack_archive; fi
    return 0
  fi
  # This process holds the lock: anything half-made for this key is from a dead builder.
  clean_dead_builders
  build_runtime "$RUNTIME"
  if [ "$ENV_MODE" = archive ]; then publish_archive; fi
  release_lock
  trap - EXIT
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
  rm -rf "$tmp"
  mkdir -p "$tmp"
  cp -R "$APP_SOURCE" "$tmp/app"
  rm -rf "$target"
  mv "$tmp" "$target"
  APP_PATH=$target
}

check_gpu() {
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    log "no NVIDIA driver visible (nvidia-smi missing): the app will run on the CPU"
  elif ! gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1); then
    log "warning: nvidia-smi failed ($gpu): the GPU may be unusable; check the host driver and the container's GPU access"
  else
    log "GPU: $gpu"
  fi
}

plan() {
  local action
  if runtime_has_key "$RUNTIME"; then action="start warm (runtime $KEY already on local disk)"
  elif [ "$ENV_MODE" = archive ] && published; then action="unpack $ARCHIVE to $RUNTIME"
  elif [ -d "$LOCK" ]; then action="wait for $(lock_owner)to build, or take the lock over when its heartbeat stops"
  elif [ "$ENV_MODE" = archive ]; then action="build runtime $KEY in $RUNTIME and publish $ARCHIVE"
  else action="build runtime $KEY in $RUNTIME"
  fi
  cat <<EOF
volume:       $VOLUME
mode:         $ENV_MODE
key:          $KEY
key inputs:   $(printf '%s' "$KEY_MATERIAL" | tr '\n' ' ')
runtime:      $RUNTIME
archive:      $ARCHIVE ($([ -f "$MANIFEST" ] && echo published || echo absent))
would:        $action
uv:           $(command -v uv || echo "not installed: would install it with pip")
app source:   $APP_ORIGIN ($APP_SOURCE)
command:      python -m app ${APP_ARGS[*]} (listening on $TRYON_HOST)
EOF
}

main() {
  PLAN=0
  if [ "${1:-}" = --plan ]; then PLAN=1; shift; fi
  APP_ARGS=("$@")
  [ ${#APP_ARGS[@]} -gt 0 ] || APP_ARGS=(serve)
  local started
  started=$(now)
  read_settings
  resolve_volume
  compute_key
  resolve_app
  if [ "$PLAN" = 1 ]; then plan; return; fi
  log "volume $VOLUME, runtime key $KEY ($ENV_MODE mode)"
  check_gpu
  mkdir -p "$LOCAL_DIR"
  ready_runtime
  stage_app
  log "starting the app from the $APP_ORIGIN copy after $(since "$started") s in the launcher"
  cd "$LOCAL_DIR"
  export PYTHONPATH="$APP_PATH${PYTHONPATH:+:$PYTHONPATH}" TRYON_VOLUME="$VOLUME" HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
  exec "$RUNTIME/venv/bin/python" -m app "${APP_ARGS[@]}"
}

main "$@"
