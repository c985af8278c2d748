# shellcheck shell=bash
# A runtime as an archive in parts that unpack in parallel.
#
# One `tar | zstd` stream unpacks on one core: zstd decompression and tar's file creation, not the
# read, bound a restore (a 2 GB runtime of 69k files: 0.2 s to read its 478 MiB, 3-9 s to unpack). So
# the files are spread over PARTS archives balanced by bytes (largest first onto the lightest part),
# and every part is unpacked on its own core. Part 00 holds every directory and nothing else: it is
# unpacked first, so the tars that run at once never race each other making the same parent
# directories (GNU tar then fails a file now and then: "Cannot open: No such file").
#
# Checking costs no extra pass: every part is one zstd frame with its content checksum (XXH64 of what
# was packed), which `zstd -d` verifies as it decompresses, so a flipped or missing byte fails the
# unpack. The sha256 of each part, recorded at packing, is read again only when an unpack failed, to
# tell a damaged part from a fault of this machine (store.sh). Hashing every part as it streamed past
# cost more CPU than decompressing it (coreutils' sha256sum: 1.2 s per 300 MB here) and made the
# parallel restore slower than one plain `zstd -d | tar -x` of the same parts on 2 cores.
#
# Only bash, coreutils, find, GNU tar and zstd (openssl when present): the launcher image has no Python.

# The sha256 of stdin as 64 hex digits: OpenSSL's (SHA extensions: 5x faster here) where the image has
# it (ca-certificates brings it), else coreutils'.
sha256_stream() {
  if command -v openssl >/dev/null 2>&1; then
    openssl dgst -sha256 -r | cut -c1-64
  else
    sha256sum | cut -c1-64
  fi
}

# archive_pack SRC_DIR OUT_DIR PARTS
# Writes OUT_DIR/part-00.tar.zst (the directories) and part-01 .. part-PARTS (the files, balanced);
# prints "<file> <bytes> <sha256>" per part, then "files N bytes B" (non-directories, regular bytes).
archive_pack() {
  local src=$1 out=$2 parts=$3 lists i fd entry kind size path fds=() loads=() lightest files=0 bytes=0 pids=() status=0
  lists=$(mktemp -d "$out/.lists.XXXXXX") || { echo "archive_pack: cannot write in $out" >&2; return 1; }
  for ((i = 0; i <= parts; i++)); do
    exec {fd}>"$lists/$i"
    fds[i]=$fd
    loads[i]=0
  done
  # Entries as "<kind> <size> <path>\0", files largest first; paths may hold any character but NUL.
  while IFS= read -r -d '' entry; do
    kind=${entry%% *} entry=${entry#* }
    size=${entry%% *} path=${entry#* }
    if [ "$kind" = d ]; then
      printf '%s\0' "$path" >&"${fds[0]}"
      continue
    fi
    lightest=1
    for ((i = 2; i <= parts; i++)); do
      [ "${loads[i]}" -lt "${loads[lightest]}" ] && lightest=$i
    done
    loads[lightest]=$((loads[lightest] + size + 512))
    printf '%s\0' "$path" >&"${fds[lightest]}"
    files=$((files + 1))
    [ "$kind" = f ] && bytes=$((bytes + size))
  done < <(cd "$src" && find . -mindepth 1 -printf '%y %s %p\0' | sort -z -t ' ' -k1,1 -k2,2nr)
  for fd in "${fds[@]}"; do exec {fd}>&-; done
  for ((i = 0; i <= parts; i++)); do
    (
      set -o pipefail
      name=$(printf 'part-%02d.tar.zst' "$i")
      tar -C "$src" --null --no-recursion -T "$lists/$i" -cf - \
        | zstd -q -T0 -3 --check -c | tee "$out/$name" | sha256_stream > "$lists/$i.sha"
    ) &
    pids[i]=$!
  done
  for ((i = 0; i <= parts; i++)); do
    wait "${pids[i]}" || status=1
  done
  if [ "$status" != 0 ]; then
    rm -rf "$lists"
    echo "archive_pack: packing $src into $out failed (is the disk full? df -h $out)" >&2
    return 1
  fi
  for ((i = 0; i <= parts; i++)); do
    local name
    name=$(printf 'part-%02d.tar.zst' "$i")
    printf '%s %s %s\n' "$name" "$(stat -c %s "$out/$name")" "$(cat "$lists/$i.sha")"
  done
  printf 'files %s bytes %s\n' "$files" "$bytes"
  rm -rf "$lists"
}

# archive_unpack DEST_DIR JOBS PART...
# Extracts the first part (the directories) alone, then the others into DEST_DIR, JOBS at once. Fails,
# naming the part, if any part fails to read, decompress (zstd's checksum included) or extract; the
# caller tells a damaged archive from a full disk by hashing the parts against the manifest.
archive_unpack() {
  local dest=$1 jobs=$2 part pids=() pid alive status=0
  shift 2
  archive_unpack_one "$dest" "$1" || return 1
  shift
  for part in "$@"; do
    while true; do  # at most JOBS at once
      alive=0
      for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=$((alive + 1)); done
      [ "$alive" -ge "$jobs" ] || break
      wait -n "${pids[@]}" 2>/dev/null || true
    done
    archive_unpack_one "$dest" "$part" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  return "$status"
}

archive_unpack_one() {
  local dest=$1 part=$2
  if ! (set -o pipefail; zstd -q -d -c -- "$part" | tar -C "$dest" -xf -); then
    echo "archive_unpack: $(basename "$part") failed to read, decompress or extract" >&2
    return 1
  fi
}
