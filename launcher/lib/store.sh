# shellcheck shell=bash
# Published runtimes on the volume, one folder per key:
#
#   envs/<key>/manifest                    which build workers use: renamed into place last
#   envs/<key>/<build id>.manifest         that build's own record (parts, sizes, sha256, key inputs)
#   envs/<key>/<build id>.pNN.tar.zst      its archive, in parts that unpack in parallel
#   envs/<key>/<build id>.retired          when a newer build replaced it (removed an hour later)
#   envs/<key>/<build id>.*.bad            a build that failed its check, kept for inspection
#
# Every build publishes under its own name, so two builders publishing is harmless: both archives are
# whole and the last manifest wins. A worker unpacks only parts whose size and sha256 match the
# manifest that named them; a build that fails is moved aside and rebuilt, never left to fail everyone.
#
# Needs from the caller: KEY, KEY_DIR, KEY_MATERIAL, BUILD_ID, RUNTIME, LOCAL_DIR, STAMP_NAME, ARCHIVE_PARTS,
# log, die, failpoint, beating, heartbeat_now, host_name, since, mib, and lib/archive.sh.

store_init() {
  MANIFEST=$KEY_DIR/manifest
  MANIFEST_FORMAT=2
  RETIRE_AFTER_MIN=60
}

manifest_value() { [ -f "$1" ] && sed -n "s/^$2=//p" "$1" 2>/dev/null | head -n1 || true; }
# "<file> <size> <sha256>" per part.
manifest_parts() { sed -n 's/^part=//p' "$1" 2>/dev/null || true; }

# A manifest is complete when it is for this key and every part it names is on the volume at its size.
manifest_complete() {
  local file=$1 name size sha count=0
  [ -f "$file" ] || return 1
  [ "$(manifest_value "$file" format)" = "$MANIFEST_FORMAT" ] && [ "$(manifest_value "$file" key)" = "$KEY" ] \
    || return 1
  while read -r name size sha; do
    [ -n "$sha" ] && [ "$(stat -c %s "$KEY_DIR/$name" 2>/dev/null)" = "$size" ] || return 1
    count=$((count + 1))
  done < <(manifest_parts "$file")
  [ "$count" -ge 1 ] && [ "$count" = "$(manifest_value "$file" parts)" ]
}

# Sets USE_MANIFEST to the manifest to restore from. When the key's manifest is missing or names a
# build that is gone, a complete build record is used instead (its builder stopped between publishing
# the archive and naming it): it is promoted to the key's manifest so later workers find it at once.
find_published() {
  local record named
  if manifest_complete "$MANIFEST"; then USE_MANIFEST=$MANIFEST; return 0; fi
  # Parts are renamed into place before the manifest names them: a named part that is missing or of
  # the wrong size is damage, never a publish in progress.
  named=$(manifest_value "$MANIFEST" build)
  if [ -n "$named" ] && [ "$(manifest_value "$MANIFEST" key)" = "$KEY" ] && [ "${MODE:-}" != plan ] \
      && [ "$VOLUME_WRITABLE" = 1 ]; then
    mark_bad "$named" "a part it names is missing or has the wrong size"
  fi
  # Build ids start with their UTC time: name order is age order, newest first.
  while IFS= read -r record; do
    manifest_complete "$record" || continue
    USE_MANIFEST=$record
    [ "${MODE:-}" != plan ] || return 0
    if cp "$record" "$MANIFEST.tmp.$BUILD_ID" 2>/dev/null && mv -f "$MANIFEST.tmp.$BUILD_ID" "$MANIFEST" 2>/dev/null; then
      USE_MANIFEST=$MANIFEST
      local build
      build=$(manifest_value "$record" build)
      # Its builder may be alive, between renaming the parts and the manifest: it then still holds the lock.
      if [ -d "$KEY_DIR/.lock" ] && [ "$(sed -n 's/^token=//p' "$KEY_DIR/.lock/owner" 2>/dev/null | head -n1)" = "$build" ]; then
        log "found complete build $build that no manifest named yet (its builder still holds the lock: it was about to name it, or stopped before it could): published it"
      else
        log "found complete build $build that no manifest named (its builder stopped before naming it): published it"
      fi
    fi
    return 0
  done < <(printf '%s\n' "$KEY_DIR"/*.manifest | sort -r)
  return 1
}

# -- publishing -------------------------------------------------------------------------------------

# Pack $RUNTIME in the build's own folder, record it, rename the parts into place, then the manifest.
publish_build() {
  local started parts_list errors record previous name size sha files bytes total=0
  started=$(now)
  # On local disk: a builder taken over while stalled finds its build folder on the volume gone.
  parts_list=$LOCAL_DIR/.parts.$$
  errors=$LOCAL_DIR/.pack-errors.$$
  published_meanwhile && return 0
  log "packing runtime $KEY into $ARCHIVE_PARTS parts"
  failpoint packing
  if ! beating archive_pack "$RUNTIME" "$BUILD_DIR" "$ARCHIVE_PARTS" > "$parts_list" 2> "$errors"; then
    if [ ! -d "$BUILD_DIR" ] || ! lock_is_mine; then
      rm -f "$parts_list" "$errors"
      published_meanwhile && return 0
      publish_failed "it stalled past TRYON_LOCK_STALE_S=${LOCK_STALE_S} s while packing and another worker took its lock over and removed its build folder; the worker that took over publishes the runtime"
      return 1
    fi
    sed 's/^/[launcher]   /' "$errors" >&2
    rm -f "$parts_list" "$errors"
    publish_failed "packing into $BUILD_DIR failed (above); check free space on the volume (df -h $VOLUME)"
    return 1
  fi
  rm -f "$errors"
  failpoint packed
  published_meanwhile && return 0
  [ -f "$BUILD_DIR/part-00.tar.zst" ] \
    || { publish_failed "its packed parts are gone from $BUILD_DIR (it stalled past TRYON_LOCK_STALE_S=${LOCK_STALE_S} s and another worker took it over); the worker that took over publishes the runtime"; return 1; }
  read -r _ files _ bytes < <(grep '^files ' "$parts_list")
  # The build's record first: whoever finds these parts without a manifest can check and use them.
  record=$KEY_DIR/$BUILD_ID.manifest
  {
    printf 'format=%s\nkey=%s\nbuild=%s\nhost=%s\ncreated=%s\nfiles=%s\nbytes=%s\n' "$MANIFEST_FORMAT" "$KEY" \
      "$BUILD_ID" "$(host_name)" "$(date -u +%FT%TZ)" "$files" "$bytes"
    printf 'parts=%s\n' "$(grep -c '^part-' "$parts_list")"
    while read -r name size sha; do
      printf 'part=%s.p%s %s %s\n' "$BUILD_ID" "${name#part-}" "$size" "$sha"
    done < <(grep '^part-' "$parts_list")
    printf '%s\n' "$KEY_MATERIAL" | sed 's/^/input./'
  } > "$record.tmp" || { publish_failed "writing $record failed; check free space on the volume"; return 1; }
  mv -f "$record.tmp" "$record" || { publish_failed "renaming $record.tmp failed"; return 1; }
  while read -r name size sha; do
    mv -f "$BUILD_DIR/$name" "$KEY_DIR/$BUILD_ID.p${name#part-}" 2>/dev/null \
      || { publish_failed "moving $name into $KEY_DIR failed (its build folder is gone: was this build taken over?)"; return 1; }
    total=$((total + size))
  done < <(grep '^part-' "$parts_list")
  rm -f "$parts_list"
  heartbeat_now
  failpoint archive-published
  # The fence: name nothing that is not whole on the volume, whatever happened while we were away.
  manifest_complete "$record" || { publish_failed "its parts on the volume do not match its record"; return 1; }
  previous=$(manifest_value "$MANIFEST" build)
  if ! { cp "$record" "$MANIFEST.tmp.$BUILD_ID" && mv -f "$MANIFEST.tmp.$BUILD_ID" "$MANIFEST"; }; then
    publish_failed "writing $MANIFEST failed"
    return 1
  fi
  # The build it replaced stays an hour for workers that read the old manifest a moment ago.
  if [ -n "$previous" ] && [ "$previous" != "$BUILD_ID" ]; then date -u +%FT%TZ > "$KEY_DIR/$previous.retired"; fi
  failpoint manifest-published
  log "runtime published as build $BUILD_ID ($(mib "$total") in $(manifest_value "$record" parts) parts, $files files) in $(since "$started") s"
}

# Stalled past the stale limit, this build lost its lock and another was published: keep theirs.
published_meanwhile() {
  lock_is_mine && return 1
  find_published || return 1
  log "build $(manifest_value "$USE_MANIFEST" build) was published while this build was stalled: keeping it, not publishing this one"
}

# This worker's own runtime is whole on its local disk either way: it starts, others build or use theirs.
publish_failed() {
  rm -f "$KEY_DIR/$BUILD_ID".* "$MANIFEST.tmp.$BUILD_ID" "$LOCAL_DIR/.parts.$$" 2>/dev/null
  log "warning: build $BUILD_ID was not published (phase: publish): $1"
}

# -- restoring --------------------------------------------------------------------------------------

free_local_bytes() { df -P -B1 "$1" 2>/dev/null | awk 'NR == 2 { print $4 }'; }

# The venv names its interpreter by absolute path (pyvenv.cfg's home, bin/python), and uv links the
# managed Python's minor version to its patch release the same way: point them where the runtime now is.
relocate_runtime() {
  local target=$1 new=$2 old home link
  old=$(cat "$target/venv/.tryon-runtime-root" 2>/dev/null) || return 0
  [ "$old" = "$new" ] && return 0
  home=$(sed -n 's/^home = //p' "$target/venv/pyvenv.cfg")
  if [[ "$home" == "$old"/* ]]; then sed -i "s|^home = .*|home = $new${home#"$old"}|" "$target/venv/pyvenv.cfg"; fi
  while IFS= read -r -d '' link; do
    local to
    to=$(readlink "$link")
    if [[ "$to" == "$old"/* ]]; then ln -sfn "$new${to#"$old"}" "$link"; fi
  done < <(find "$target/venv/bin" "$target/python" -maxdepth 1 -type l -print0 2>/dev/null)
  printf '%s\n' "$new" > "$target/venv/.tryon-runtime-root"
}

# Unpack the build that USE_MANIFEST names into $RUNTIME. Returns 1 (after moving it aside) when the
# archive is damaged; dies when the fault is on this machine (local disk full, not writable).
restore_runtime() {
  local started manifest=$USE_MANIFEST build tmp parts=() name size sha bytes free jobs status=0 bad=""
  started=$(now)
  build=$(manifest_value "$manifest" build)
  # Copy the manifest first: a newer build may replace it while we read.
  cp "$manifest" "$LOCAL_DIR/.manifest.$$" 2>/dev/null && manifest=$LOCAL_DIR/.manifest.$$
  bytes=$(manifest_value "$manifest" bytes)
  free=$(free_local_bytes "$LOCAL_DIR")
  if [ -n "$free" ] && [ -n "$bytes" ] && [ "$free" -lt $((bytes + bytes / 10)) ]; then
    rm -f "$LOCAL_DIR/.manifest.$$"
    die "the local disk has $(mib "$free") free in $LOCAL_DIR but runtime $KEY needs $(mib "$bytes") unpacked: give the container more disk (RunPod: container disk) or set TRYON_LOCAL_DIR to a larger local folder"
  fi
  # A part missing or of another size than its manifest says is damaged: no need to unpack to know.
  while read -r name size sha; do
    parts+=("$KEY_DIR/$name")
    [ "$(stat -c %s "$KEY_DIR/$name" 2>/dev/null)" = "$size" ] || bad="$bad $name"
  done < <(manifest_parts "$manifest")
  tmp=$RUNTIME.unpack.$$
  rm -rf "$tmp"
  mkdir -p "$tmp" || die "cannot create $tmp (phase: unpack): is $LOCAL_DIR writable? set TRYON_LOCAL_DIR to a writable local folder"
  # One part per core: each part is a zstd | tar pair, and with one core this is the plain sequential pipeline.
  jobs=$(nproc 2>/dev/null || echo 4)
  if [ -z "$bad" ]; then
    log "unpacking build $build ($(manifest_value "$manifest" files) files, $(mib "${bytes:-0}"); ${#parts[@]} parts, $jobs at once) to $RUNTIME"
    archive_unpack "$tmp" "$jobs" "${parts[@]}" || status=$?
    failpoint unpacking
  fi
  # zstd checked every part's content as it unpacked. After a failure, which part differs from what the
  # manifest recorded? A fault of this machine (disk full) is told apart from a damaged archive.
  if [ "$status" != 0 ]; then
    while read -r name size sha; do
      [ "$(sha256_stream < "$KEY_DIR/$name" 2>/dev/null)" = "$sha" ] || bad="$bad $name"
    done < <(manifest_parts "$manifest")
  fi
  if [ -z "$bad" ] && [ "$status" != 0 ]; then
    rm -rf "$tmp" "$LOCAL_DIR/.manifest.$$"
    free=$(free_local_bytes "$LOCAL_DIR")
    die "unpacking build $build to $LOCAL_DIR failed although the archive on the volume is intact (its sha256 matches; $(mib "${free:-0}") free here): free local disk or set TRYON_LOCAL_DIR to a larger, writable local folder, then restart"
  fi
  if [ -n "$bad" ]; then
    bad="parts that differ from the manifest (size or sha256):$bad"
  elif [ "$(cat "$tmp/venv/$STAMP_NAME" 2>/dev/null)" != "$KEY" ]; then
    bad="its runtime has no key stamp $KEY"
  fi
  rm -f "$LOCAL_DIR/.manifest.$$"
  if [ -n "$bad" ]; then
    rm -rf "$tmp"
    mark_bad "$build" "$bad"
    return 1
  fi
  relocate_runtime "$tmp" "$RUNTIME"
  rm -rf "$RUNTIME.old"
  if [ -e "$RUNTIME" ]; then mv -T "$RUNTIME" "$RUNTIME.old" || die "cannot move the old $RUNTIME aside (phase: unpack)"; fi
  mv -T "$tmp" "$RUNTIME" || die "cannot move the unpacked runtime to $RUNTIME (phase: unpack)"
  rm -rf "$RUNTIME.old"
  "$RUNTIME/venv/bin/python" -c 'import sys' \
    || die "the unpacked runtime in $RUNTIME does not start (phase: unpack); run the launcher with --plan and check the log above"
  touch "$KEY_DIR/last-used" 2>/dev/null || true
  [ "$VOLUME_WRITABLE" = 0 ] || sweep_leftovers "$build" || true
  log "runtime restored from build $build in $(since "$started") s ($(mib "$(manifest_bytes_on_volume "$USE_MANIFEST")") read)"
}

manifest_bytes_on_volume() { manifest_parts "$1" | awk '{ s += $2 } END { print s + 0 }'; }

# Move a damaged build aside (kept for inspection) and unname it, so the next step rebuilds it.
mark_bad() {
  local build=$1 why=$2 file count aside moved=0
  for file in "$KEY_DIR/$build".*; do
    [ -e "$file" ] && [[ "$file" != *.bad ]] || continue
    if mv -f "$file" "$file.bad" 2>/dev/null; then moved=$((moved + 1)); fi
  done
  # Unname it, unless a newer build was named meanwhile (move aside, check, put back if not ours).
  if [ "$(manifest_value "$MANIFEST" build)" = "$build" ]; then
    aside=$MANIFEST.bad.$BUILD_ID
    if mv -T "$MANIFEST" "$aside" 2>/dev/null; then
      if [ "$(manifest_value "$aside" build)" = "$build" ]; then rm -f "$aside"; else mv -n -T "$aside" "$MANIFEST" 2>/dev/null || rm -f "$aside"; fi
    fi
  fi
  if [ "$moved" = 0 ] && [ "$(manifest_value "$MANIFEST" build)" = "$build" ]; then
    # Nothing moved, the manifest still names it: a read-only volume. Say what happened, not what could not.
    log "build $build of runtime $KEY failed its check ($why); nothing was moved aside (the volume cannot be written here), so it is still the published build: trying it again"
    return 0
  fi
  count=$(find "$KEY_DIR" -maxdepth 1 -name '*.manifest.bad' 2>/dev/null | wc -l) || true
  log "build $build of runtime $KEY failed its check ($why): moved aside as $KEY_DIR/$build.*.bad ($count damaged so far for this key); rebuilding it"
}

# -- cleaning up (the builder, after publishing) ----------------------------------------------------

# Newest change anywhere in a folder, in seconds since the epoch.
newest_change() { find "$1" -printf '%T@\n' 2>/dev/null | sort -n | tail -n1 | cut -d. -f1; }

cleanup_volume() {
  local envs=$VOLUME/envs keep=$ENV_KEEP hour_ago folder key rank=0 file build current
  hour_ago=$(($(date +%s) - RETIRE_AFTER_MIN * 60))
  current=$(manifest_value "$MANIFEST" build)
  # Builds of this key replaced more than an hour ago, orphans over an hour old, stray temp files.
  for file in "$KEY_DIR"/*.retired; do
    [ -f "$file" ] || continue
    build=$(basename "$file" .retired)
    [ "$build" != "$current" ] && [ -z "$(find "$file" -mmin -"$RETIRE_AFTER_MIN")" ] || continue
    rm -f "$KEY_DIR/$build".* && log "removed build $build, replaced over an hour ago"
  done
  find "$KEY_DIR" -maxdepth 1 \( -name '*.tar.zst' -o -name '*.manifest' -o -name 'manifest.tmp.*' \) \
    -mmin +"$RETIRE_AFTER_MIN" ! -name "$current.*" -print 2>/dev/null | while read -r file; do
      build=$(basename "$file"); build=${build%%.*}
      # Orphans only: a build named by a record but never by the manifest, left by a dead builder.
      [ -f "$KEY_DIR/$build.retired" ] && continue
      rm -f "$file"
    done || true
  find "$KEY_DIR" -maxdepth 1 -name '.lock.*' -mmin +10 -exec rm -rf {} + 2>/dev/null || true
  # Other keys: keep the ENV_KEEP newest (this one counts); never remove one touched within the hour.
  # Legacy single-file archives (format 1) are removed once an hour old.
  find "$envs" -maxdepth 1 \( -name '*.tar.zst' -o -name '*.manifest' -o -name '.lock-*' -o -name '.*.tmp.*' \) \
    -mmin +"$RETIRE_AFTER_MIN" -exec rm -rf {} + 2>/dev/null || true
  while read -r _ key; do
    [ "$key" = "$KEY" ] && continue
    rank=$((rank + 1))
    [ "$rank" -ge "$keep" ] || continue
    [ "$(key_last_change "$key")" -lt "$hour_ago" ] || continue
    rm -rf "${envs:?}/$key" "$VOLUME/venvs/$key" && log "removed runtime $key (TRYON_ENV_KEEP=$keep keeps the newest keys)"
  done < <(for folder in "$envs"/*/ "$VOLUME"/venvs/*/; do
      key=$(basename "$folder")
      [[ "$key" =~ ^[0-9a-f]{16}$ ]] && printf '%s %s\n' "$(key_last_change "$key")" "$key"
    done | sort -u -k2,2 | sort -rn)
}

# Newest change of a key's files on the volume (archives and, in volume mode, its venv's top level).
key_last_change() {
  { newest_change "$VOLUME/envs/$1"; find "$VOLUME/venvs/$1" -maxdepth 1 -printf '%T@\n' 2>/dev/null | cut -d. -f1; echo 0; } \
    | sort -n | tail -n1
}
