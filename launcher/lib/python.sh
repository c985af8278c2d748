# shellcheck shell=bash
# The uv-managed Python of the runtime, with or without the internet.
#
# uv downloads a managed Python (python-build-standalone) from the internet. So the first build that
# has the internet keeps the archive it used on the volume, in python-downloads/ next to wheels/, and
# every later build installs from there with no network at all:
#
#   python-downloads/<archive file>     e.g. cpython-3.11.14+20251014-x86_64-unknown-linux-gnu-install_only.tar.gz
#   python-downloads/index              "<archive file> <sha256> <version> <build>" per line
#
# The index becomes a uv downloads list (--python-downloads-json-url) pointing at the volume's files,
# so uv checks each archive's sha256 as it installs it.
#
# Needs from the caller: log (a fallback is defined below).

declare -F log >/dev/null || log() { printf '[launcher] %s\n' "$*" >&2; }

# The uv downloads list for the volume's copies matching SPEC (e.g. 3.11 or 3.11.14); fails if none.
python_downloads_json() {
  local folder=$1 spec=$2 file sha version build major minor patch arch sep="" found=1
  arch=$(uname -m)
  [ -f "$folder/index" ] || return 1
  printf '{'
  while read -r file sha version build; do
    [[ "$version" == "$spec" || "$version" == "$spec".* ]] && [ -f "$folder/$file" ] || continue
    [[ "$file" == *"$arch"*linux* ]] || continue
    IFS=. read -r major minor patch <<< "$version"
    printf '%s"cpython-%s-linux-%s-gnu": {"name": "cpython", "arch": {"family": "%s", "variant": null}, "os": "linux", "libc": "gnu", "major": %s, "minor": %s, "patch": %s, "prerelease": "", "url": "file://%s/%s", "sha256": "%s", "variant": null, "build": "%s"}' \
      "$sep" "$version" "$arch" "$arch" "$major" "$minor" "$patch" "$folder" "$file" "$sha" "$build"
    sep=", " found=0
  done < "$folder/index"
  printf '}\n'
  return "$found"
}

# python_install UV VOLUME SPEC INSTALL_DIR: the managed Python SPEC into INSTALL_DIR, from the volume's
# copy when it has one (no network), else from the internet (then kept on the volume for next time).
python_install() {
  local uv=$1 volume=$2 spec=$3 install_dir=$4 folder json
  folder=$volume/python-downloads
  json=$(mktemp "${TMPDIR:-/tmp}/python-downloads.XXXXXX.json")
  if python_downloads_json "$folder" "$spec" > "$json"; then
    log "managed Python $spec from $folder (no network needed)"
    if UV_OFFLINE=1 UV_PYTHON_INSTALL_DIR=$install_dir "$uv" python install --quiet --no-bin \
        --python-downloads-json-url "$json" "$spec"; then
      rm -f "$json"
      return 0
    fi
    log "warning: the copy in $folder did not install (see uv's message above); trying the internet"
  fi
  rm -f "$json"
  if ! UV_PYTHON_INSTALL_DIR=$install_dir "$uv" python install --quiet --no-bin "$spec"; then
    log "error: no managed Python $spec: $folder holds no copy and the download failed. Either give this machine internet access once, or run 'just build-runtime' on a machine that has it (it keeps the archive in $folder), or set TRYON_PYTHON to an installed interpreter"
    return 1
  fi
  python_keep_archive "$uv" "$folder" "$install_dir" || true
  return 0
}

# After an online install: keep the archive uv used in the volume's folder (best effort: a warning, never
# a failure). The image has no curl, so the freshly installed Python downloads it.
python_keep_archive() {
  local uv=$1 folder=$2 install_dir=$3 python
  python=$(printf '%s\n' "$install_dir"/cpython-*/bin/python3 | head -n1)
  [ -x "$python" ] || return 1
  mkdir -p "$folder" 2>/dev/null || { log "warning: cannot write $folder: the next build will need the internet again"; return 1; }
  "$python" - "$uv" "$folder" "$python" <<'PY' || { log "warning: keeping the managed Python's archive in $folder failed: the next build will need the internet again"; return 1; }
import hashlib, json, os, platform, subprocess, sys, tempfile, urllib.parse, urllib.request
uv, folder, python = sys.argv[1:]
version = platform.python_version()
listed = json.loads(subprocess.run([uv, "python", "list", version, "--only-downloads", "--show-urls",
                                    "--output-format", "json"], capture_output=True, text=True, check=True).stdout)
url = next(row["url"] for row in listed if row["version"] == version and row["url"])
name = os.path.basename(urllib.parse.unquote(urllib.parse.urlparse(url).path))
index = os.path.join(folder, "index")
if os.path.exists(os.path.join(folder, name)):
    sys.exit(0)
digest = hashlib.sha256()
handle, tmp = tempfile.mkstemp(dir=folder, prefix=".download.")
with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=120) as response:
    for block in iter(lambda: response.read(1 << 20), b""):
        digest.update(block)
        out.write(block)
os.replace(tmp, os.path.join(folder, name))
build = name.split("+", 1)[1].split("-", 1)[0] if "+" in name else ""
lines = open(index).read().splitlines() if os.path.exists(index) else []
lines = [line for line in lines if line.split()[0] != name] + [f"{name} {digest.hexdigest()} {version} {build}"]
handle, tmp = tempfile.mkstemp(dir=folder, prefix=".index.")
with os.fdopen(handle, "w") as out:
    out.write("\n".join(lines) + "\n")
os.replace(tmp, index)
print(f"[launcher] kept the managed Python's archive as {os.path.join(folder, name)}: later builds need no internet",
      file=sys.stderr)
PY
}

# One line for --plan: where a managed-Python build would take its Python from.
python_plan() {
  local volume=$1 spec=$2 folder
  folder=$volume/python-downloads
  if python_downloads_json "$folder" "$spec" >/dev/null 2>&1; then
    printf 'managed Python %s from %s (no internet needed)\n' "$spec" "$folder"
  else
    printf 'managed Python %s downloaded from the internet on the first build (then kept in %s); without internet, fill that folder with just build-runtime elsewhere or set TRYON_PYTHON to an interpreter\n' "$spec" "$folder"
  fi
}
