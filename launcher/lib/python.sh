# shellcheck shell=bash
# The runtime's uv-managed Python, with or without the internet.
#
# uv downloads a managed Python (a python-build-standalone archive) from the internet. A build with
# the internet keeps the archive uv downloaded and checked in python-downloads/ next to wheels/ on the
# volume, and every later build installs from there with no network at all:
#
#   $VOLUME/python-downloads/cpython-3.11.18+20261110-x86_64-unknown-linux-gnu-install_only_stripped.tar.gz
#   $VOLUME/python-downloads/cpython-3.11.18+20261110-x86_64-unknown-linux-gnu-install_only_stripped.tar.gz.sha256
#
# The archive keeps its published name; the .sha256 beside it (sha256sum's format) records the digest
# uv checked when it downloaded it. An install from the volume hands uv a downloads list
# (--python-downloads-json-url) naming the volume's archives with those digests, so uv checks the
# archive again as it unpacks it, and takes the newest one matching the request even when this uv's
# built-in list has moved on to a newer patch release.
#
# What uv offers and why this file does not use it alone (uv 0.13):
# - UV_PYTHON_INSTALL_MIRROR=file://DIR reads DIR/<release tag>/<file> and checks uv's built-in digest,
#   so it only takes the exact build this uv version lists.
# - UV_PYTHON_CACHE_DIR=DIR keeps downloads as DIR/<first 9 hex of sha256>-<file, + as ->, and with
#   UV_OFFLINE=1 installs from there; same limit. It is used below for the download itself, in a
#   temporary folder, to get the very bytes uv checked.
#
# Functions only; safe under set -euo pipefail. Uses the caller's log() when it has one.

declare -F log >/dev/null || log() { printf '[launcher] %s\n' "$*" >&2; }

# The fields of a python-build-standalone install_only archive name for this machine, into PY_VERSION,
# PY_MAJOR, PY_MINOR, PY_PATCH, PY_PRE and PY_BUILD; fails for any other name (other machines,
# freethreaded or debug builds, full archives).
python_archive_fields() {
  local arch
  arch=$(uname -m)
  [[ "$1" =~ ^cpython-([0-9]+)\.([0-9]+)\.([0-9]+)((a|b|rc)[0-9]+)?(\+|-|%2B)([A-Za-z0-9._]+)-([A-Za-z0-9_]+)-unknown-linux-gnu-install_only(_stripped)?\.tar\.(gz|zst)$ ]] \
    && [ "${BASH_REMATCH[8]}" = "$arch" ] || return 1
  PY_MAJOR=${BASH_REMATCH[1]} PY_MINOR=${BASH_REMATCH[2]} PY_PATCH=${BASH_REMATCH[3]} PY_PRE=${BASH_REMATCH[4]}
  PY_BUILD=${BASH_REMATCH[7]}
  PY_VERSION=$PY_MAJOR.$PY_MINOR.$PY_PATCH$PY_PRE
}

# Whether VERSION (3.11.7) satisfies SPEC (3, 3.11 or 3.11.7). Any other form of request (>=3.11,
# cpython@3.11) matches every archive here and uv makes the choice.
python_spec_matches() {
  local spec=$1 version=$2
  [[ "$spec" =~ ^[0-9]+(\.[0-9]+){0,2}$ ]] || return 0
  [[ "$version" == "$spec" || "$version" == "$spec".* ]]
}

# python_archives FOLDER SPEC: the archive names in FOLDER for SPEC on this machine, newest first, one
# per version.
python_archives() {
  local folder=$1 spec=$2 path name
  [ -d "$folder" ] || return 0
  for path in "$folder"/cpython-*; do
    name=${path##*/}
    if [ -f "$path" ] && python_archive_fields "$name" && python_spec_matches "$spec" "$PY_VERSION"; then
      printf '%s %s\n' "$PY_VERSION" "$name"
    fi
  done | sort -r -V | awk '!seen[$1]++ { print $2 }'
}

# The sha256 recorded beside an archive; without a record (an archive put there by hand) the digest of
# the file as it is, so uv still catches an archive that changes while it reads it.
python_archive_sha() {
  local path=$1 sha=""
  [ -r "$path.sha256" ] && { read -r sha _ < "$path.sha256" || true; }
  if ! [[ "$sha" =~ ^[0-9a-f]{64}$ ]]; then
    log "note: no ${path##*/}.sha256 beside the archive: checking it against its own digest only"
    sha=$(sha256sum < "$path") || return 1
    sha=${sha%% *}
  fi
  printf '%s\n' "$sha"
}

# A file:// URL for a path (percent-encoding what a URL path cannot hold as is).
python_file_url() {
  local path=$1 out="" char i
  local LC_ALL=C
  for ((i = 0; i < ${#path}; i++)); do
    char=${path:i:1}
    case "$char" in
      [A-Za-z0-9/._~+-]) out+=$char ;;
      *) printf -v char '%%%02X' "'$char"; out+=$char ;;
    esac
  done
  printf 'file://%s\n' "$out"
}

# python_volume_json FOLDER SPEC: a uv downloads list naming the volume's archives for SPEC; fails if
# there are none.
python_volume_json() {
  local folder=$1 spec=$2 name names sha url sep=""
  local PY_VERSION PY_MAJOR PY_MINOR PY_PATCH PY_PRE PY_BUILD
  names=$(python_archives "$folder" "$spec") || return 1
  [ -n "$names" ] || return 1
  printf '{'
  while read -r name; do
    python_archive_fields "$name" || return 1
    sha=$(python_archive_sha "$folder/$name") || return 1
    url=$(python_file_url "$folder/$name")
    printf '%s\n "cpython-%s-linux-%s-gnu": {"name": "cpython", "arch": {"family": "%s", "variant": null}, "os": "linux", "libc": "gnu", "major": %s, "minor": %s, "patch": %s, "prerelease": "%s", "build": "%s", "variant": null, "url": "%s", "sha256": "%s"}' \
      "$sep" "$PY_VERSION" "$(uname -m)" "$(uname -m)" "$PY_MAJOR" "$PY_MINOR" "$PY_PATCH" "$PY_PRE" "$PY_BUILD" "$url" "$sha"
    sep=,
  done <<< "$names"
  printf '\n}\n'
}

# python_download_url UV SPEC: the archive URL uv would download for SPEC on this machine (its built-in
# list, or UV_PYTHON_DOWNLOADS_JSON_URL / UV_PYTHON_INSTALL_MIRROR when set); empty if uv cannot say.
python_download_url() {
  local listed
  listed=$("$1" python list "$2" --only-downloads --show-urls 2>/dev/null) || return 0
  printf '%s\n' "$listed" | awk '$1 ~ /^cpython-/ && $1 !~ /\+/ && $2 ~ /:\/\// { print $2; exit }'
}

# The file name at the end of a URL, percent-decoded.
python_url_name() {
  local name=${1##*/}
  name=${name%%[?#]*}
  printf '%b\n' "${name//%/\\x}"
}

# python_keep UV SPEC CACHE FOLDER: copy the archive uv downloaded into CACHE (its UV_PYTHON_CACHE_DIR)
# into FOLDER under its published name, with its .sha256: each written to a temporary name, checked and
# renamed into place. Fails (after a warning) if anything goes wrong; the caller decides what that means.
python_keep() {
  local uv=$1 spec=$2 cache=$3 folder=$4 file="" path cached name url sha copy_sha tmp
  local PY_VERSION PY_MAJOR PY_MINOR PY_PATCH PY_PRE PY_BUILD
  for path in "$cache"/*.tar.*; do
    [ -f "$path" ] || continue
    [ -z "$file" ] || { log "warning: uv left several archives in $cache; keeping none in $folder"; return 1; }
    file=$path
  done
  [ -n "$file" ] || { log "warning: found no archive uv downloaded (in $cache); keeping none in $folder"; return 1; }
  sha=$(sha256sum < "$file") || { log "warning: cannot read $file; keeping none in $folder"; return 1; }
  sha=${sha%% *}
  # uv names it <first 9 hex of its sha256>-<published name with + as ->; the published name comes from
  # the URL uv lists for SPEC, when that is the same file.
  cached=${file##*/}
  cached=${cached#"${sha:0:9}"-}
  url=$(python_download_url "$uv" "$spec")
  name=$(python_url_name "$url")
  [ -n "$url" ] && [ "${name//+/-}" = "$cached" ] || name=$cached
  python_archive_fields "$name" || { log "warning: $name is not a python-build-standalone install_only archive for this machine; keeping none in $folder"; return 1; }
  if [ -f "$folder/$name" ] && [ "$(cat "$folder/$name.sha256" 2>/dev/null)" = "$sha  $name" ]; then
    log "the volume already keeps $name"
    return 0
  fi
  if ! mkdir -p "$folder" 2>/dev/null || ! tmp=$(mktemp "$folder/.keep.XXXXXX" 2>/dev/null); then
    log "warning: cannot write to $folder: the managed Python's archive is not kept there, so the next build needs the internet again"
    return 1
  fi
  if cp "$file" "$tmp" 2>/dev/null && chmod 644 "$tmp" && copy_sha=$(sha256sum < "$tmp") && [ "${copy_sha%% *}" = "$sha" ] \
      && mv -f "$tmp" "$folder/$name" 2>/dev/null && tmp=$(mktemp "$folder/.keep.XXXXXX" 2>/dev/null) \
      && printf '%s  %s\n' "$sha" "$name" > "$tmp" && chmod 644 "$tmp" && mv -f "$tmp" "$folder/$name.sha256" 2>/dev/null; then
    log "kept the managed Python's archive as $folder/$name (sha256 ${sha:0:16}...): later builds need no internet for it"
    return 0
  fi
  rm -f "$tmp"
  log "warning: writing $folder/$name failed: the managed Python's archive is not kept there, so the next build needs the internet again"
  return 1
}

# python_download UV SPEC INSTALL_DIR CACHE: SPEC from the internet into INSTALL_DIR, the archive kept in
# CACHE (uv downloads it there, checks its sha256 against its own list, and unpacks it from there).
python_download() {
  UV_PYTHON_CACHE_DIR=$4 UV_PYTHON_INSTALL_DIR=$3 "$1" python install --no-bin "$2"
}

# Whether UV_OFFLINE holds one of the values uv reads as true.
python_uv_offline() {
  case "${UV_OFFLINE:-}" in 1 | [Tt][Rr][Uu][Ee] | [Yy][Ee][Ss] | [Oo][Nn]) return 0 ;; *) return 1 ;; esac
}

# python_install UV VOLUME SPEC INSTALL_DIR: the managed Python SPEC (3.11) into INSTALL_DIR
# (UV_PYTHON_INSTALL_DIR): from $VOLUME/python-downloads when it holds a matching archive, with no
# network at all; else from the internet, then the archive is kept there for the next build (best
# effort: a warning if that fails). With neither, fails with one line naming the remedies.
python_install() {
  local uv=$1 volume=$2 spec=$3 install_dir=$4 folder json tmp url copy="" usable="" installed status=0
  local why="the download failed (no internet?)"
  folder=$volume/python-downloads
  copy=$(python_archives "$folder" "$spec") || copy=""
  [ -z "$copy" ] || usable="usable "
  if [ -n "$copy" ] && json=$(mktemp "${TMPDIR:-/tmp}/python-downloads.XXXXXX"); then
    if python_volume_json "$folder" "$spec" > "$json" \
        && env -u UV_PYTHON_CACHE_DIR UV_OFFLINE=1 UV_PYTHON_INSTALL_DIR="$install_dir" "$uv" python install \
          --no-bin --python-downloads-json-url "$json" "$spec"; then
      rm -f "$json"
      installed=$(cd "$install_dir" && printf '%s ' cpython-*.*.*) || installed=""
      log "managed Python $spec (${installed% }) installed from the volume's copy in $folder: no network used"
      return 0
    fi
    rm -f "$json"
    log "warning: the copy of Python $spec in $folder did not install (see uv's message above)$(python_uv_offline || printf ': trying the internet')"
  fi
  if python_uv_offline; then
    why="UV_OFFLINE is set, so uv downloads nothing"
    status=1
  else
    [ -n "$copy" ] || log "managed Python $spec: no copy in $folder, downloading it"
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/python-download.XXXXXX") || return 1
    if python_download "$uv" "$spec" "$install_dir" "$tmp"; then
      python_keep "$uv" "$spec" "$tmp" "$folder" || true
    else
      status=1
    fi
    rm -rf "$tmp"
  fi
  [ "$status" = 0 ] && return 0
  url=$(python_download_url "$uv" "$spec")
  if [ -n "$url" ]; then
    url="$(python_url_name "$url") (from $url)"
  else
    url="the archive at the URL that \"uv python list $spec --only-downloads --show-urls\" prints"
  fi
  log "error: no managed Python $spec: $folder holds no ${usable}copy and $why. Either run 'just build-runtime' on a machine with internet and this volume (it keeps the archive in $folder), or put $url into $folder, or set TRYON_PYTHON to the path of an installed python3"
  return 1
}

# python_fetch UV VOLUME SPEC: on a machine with internet, put the archive uv would install for SPEC
# into $VOLUME/python-downloads (with its .sha256), for workers with no internet. uv downloads and
# checks it (the image has no curl); it is unpacked into a temporary folder and removed. Fails if the
# archive could not be kept.
python_fetch() {
  local uv=$1 volume=$2 spec=$3 folder url name tmp status=0
  folder=$volume/python-downloads
  url=$(python_download_url "$uv" "$spec")
  name=$(python_url_name "$url")
  if [ -n "$url" ] && [ -f "$folder/$name" ] && [ -f "$folder/$name.sha256" ]; then
    log "the volume already keeps $name (in $folder)"
    return 0
  fi
  log "fetching managed Python $spec (${url:-the download uv lists}) for $folder"
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/python-fetch.XXXXXX") || return 1
  if ! python_download "$uv" "$spec" "$tmp/python" "$tmp/cache"; then
    log "error: downloading managed Python $spec failed (see uv's message above): this needs the internet"
    status=1
  elif ! python_keep "$uv" "$spec" "$tmp/cache" "$folder"; then
    status=1
  fi
  rm -rf "$tmp"
  return "$status"
}

# python_plan VOLUME SPEC: one line for --plan, where a managed-Python build would take SPEC from.
python_plan() {
  local volume=$1 spec=$2 folder copy
  folder=$volume/python-downloads
  copy=$(python_archives "$folder" "$spec") || copy=""
  copy=${copy%%$'\n'*}
  if [ -n "$copy" ]; then
    printf 'managed Python %s from the volume: %s/%s (no internet needed)\n' "$spec" "$folder" "$copy"
  else
    printf 'managed Python %s from the internet: %s holds no copy (a build with internet keeps one there; with none the build fails: see the README, offline first build)\n' "$spec" "$folder"
  fi
}
