# shellcheck shell=bash
# The build lock: it only saves duplicate work. Correctness never rests on it (see lib/store.sh: every
# build publishes under its own name and the manifest, renamed into place last, names it).
#
#   $KEY_DIR/.lock/owner            token=<build id>, host, pid, started: who holds it
#   $KEY_DIR/.builds/<build id>/    one folder per build: its heartbeat and its temp files
#
# The heartbeat is a counter the builder itself bumps while it waits on each long step (`beating`), so
# a builder that is frozen (SIGSTOP, swapping, a stalled disk) stops beating, and there is no separate
# heartbeat process to die on its own. Waiters judge a heartbeat by their own monotonic clock, so clock
# steps and skew between workers do not matter. Ownership is checked by token before a takeover cleans
# up and before a release: nobody deletes a lock or files that are not theirs.
#
# Needs from the caller: KEY_DIR, BUILD_ID, LOCK_STALE_S, log, host_name.

# Hundredths of a second since boot: monotonic, unlike `date +%s`, so a clock step cannot make a live
# lock look stale. Silence is measured in these, not in whole seconds: two whole-second readings
# 1.01 s apart can differ by 2, and a waiter would then take over a lock that was quiet for half the limit.
uptime_cs() {
  local up _
  if read -r up _ < /proc/uptime 2>/dev/null && [[ "$up" =~ ^([0-9]+)\.([0-9]{2}) ]]; then
    printf '%s' "$((10#${BASH_REMATCH[1]} * 100 + 10#${BASH_REMATCH[2]}))"
    return
  fi
  printf '%s' "$(($(date +%s) * 100))"
}
uptime_s() { local cs; cs=$(uptime_cs); printf '%s' "$((cs / 100))"; }

# shellcheck disable=SC2153  # BUILD_ID is set by the caller
lock_init() {
  LOCK=$KEY_DIR/.lock
  BUILDS=$KEY_DIR/.builds
  BUILD_DIR=$BUILDS/$BUILD_ID
  HOLDING=0
  BEAT=0
  # Beat several times within the stale limit (at most every 5 s) so one slow write is not fatal.
  local tenths=$((LOCK_STALE_S * 10 / 6))
  ((tenths <= 50)) || tenths=50
  ((tenths >= 2)) || tenths=2
  BEAT_EVERY=$((tenths / 10)).$((tenths % 10))
}

# One line about a lock's owner, from its owner file ("" when it has none yet).
owner_field() { { sed -n "s/^$2=//p" "$1/owner" 2>/dev/null || true; } | head -n1; }
describe_owner() {
  local folder=$1 token
  if lock_is_malformed "$folder"; then printf 'nobody (%s is a stray file, not a lock folder)' "${folder##*/}"; return; fi
  token=$(owner_field "$folder" token)
  [ -n "$token" ] || { printf 'a builder that has not written its name yet'; return; }
  printf 'build %s (host %s, pid %s, since %s)' "$token" "$(owner_field "$folder" host)" \
    "$(owner_field "$folder" pid)" "$(owner_field "$folder" started)"
}

heartbeat_now() {
  BEAT=$((BEAT + 1))
  # (the braces: a redirection that fails is reported before a 2>/dev/null on the same command applies)
  { printf '%s\n' "$BEAT" > "$BUILD_DIR/heartbeat.tmp"; } 2>/dev/null \
    && mv -f "$BUILD_DIR/heartbeat.tmp" "$BUILD_DIR/heartbeat" 2>/dev/null
  return 0
}

# Run a long step ("$@") in the background and beat while it runs; returns its exit status.
# (bash's `wait -n` skips jobs that ended before it was called, so it only wakes us early; the
# status comes from a plain `wait PID`, which bash keeps for every finished job.)
beating() {
  local pid sleeper status=0
  "$@" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    heartbeat_now
    sleep "$BEAT_EVERY" &
    sleeper=$!
    wait -n "$pid" "$sleeper" 2>/dev/null || true
    kill "$sleeper" 2>/dev/null || true
    wait "$sleeper" 2>/dev/null || true
  done
  wait "$pid" || status=$?
  heartbeat_now
  return "$status"
}

# mkdir is atomic on every filesystem we meet, network ones included. Never flock on a network FS.
try_lock() {
  mkdir -p "$KEY_DIR" 2>/dev/null || return 1
  mkdir "$LOCK" 2>/dev/null || return 1
  mkdir -p "$BUILD_DIR" && heartbeat_now
  printf 'token=%s\nhost=%s\npid=%s\nstarted=%s\n' "$BUILD_ID" "$(host_name)" "$$" "$(date -u +%FT%TZ)" \
    > "$LOCK/owner.tmp" && mv -f "$LOCK/owner.tmp" "$LOCK/owner"
  HOLDING=1
  return 0
}

# A lock that no builder can hold: something other than a real folder at its name (a 0-byte file left by
# a tool or a copy, a link). Nobody beats for it; waiters judge it by their own clock, like a dead lock.
lock_is_malformed() { { [ -e "$1" ] || [ -L "$1" ]; } && { [ -L "$1" ] || [ ! -d "$1" ]; }; }

# Move a malformed lock aside and delete it, unless a real lock took its place in the meantime (then
# that one is put back): of several workers acting at once exactly one rename succeeds.
remove_malformed_lock() {
  local aside="$KEY_DIR/.lock.malformed.$BUILD_ID"
  rm -rf "$aside"
  mv -T "$LOCK" "$aside" 2>/dev/null || return 1
  if [ -d "$aside" ] && [ ! -L "$aside" ]; then
    mv -T "$aside" "$LOCK" 2>/dev/null || rm -rf "$aside"
    return 1
  fi
  rm -f "$aside"
}

lock_is_mine() { [ "$(owner_field "$LOCK" token)" = "$BUILD_ID" ]; }

# Volume mode builds in the build's own folder on the volume, which a takeover removes: a build step that
# fails because this build was stalled past the stale limit and taken over is no error. Says so.
lost_lock() {
  [ "$ENV_MODE" = volume ] && [ "$HOLDING" = 1 ] && ! lock_is_mine || return 1
  log "this build lost its lock while it was stalled (another worker took over and removed its files): dropping it, using what that worker builds"
}

# Move a lock folder aside, atomically, only if it still carries the token we expect. Of several
# workers acting at once exactly one rename succeeds; a rename that caught a newer lock puts it back.
# Prints the folder it moved to; fails when the lock was not (or no longer) the expected one.
move_lock_aside() {
  local expected=$1 why=$2 aside found
  aside="$KEY_DIR/.lock.$why.$BUILD_ID"
  rm -rf "$aside"
  mv -T "$LOCK" "$aside" 2>/dev/null || return 1
  found=$(owner_field "$aside" token)
  if [ "$found" != "$expected" ]; then
    # Someone locked again between our look and our move: give it back (if a third worker locked in
    # that instant, the one we moved loses its lock; that costs a duplicate build, never a wrong one).
    mv -T "$aside" "$LOCK" 2>/dev/null || rm -rf "$aside"
    return 1
  fi
  printf '%s' "$aside"
}

release_lock() {
  local aside
  if [ "$HOLDING" = 1 ]; then
    HOLDING=0
    if lock_is_mine; then
      if aside=$(move_lock_aside "$BUILD_ID" released); then rm -rf "$aside"; fi
    elif [ -d "$LOCK" ]; then
      log "the build lock is no longer ours ($(describe_owner "$LOCK") holds it): leaving it to them"
    else
      log "the build lock was taken over while this build was stalled, and is released already"
    fi
  fi
  rm -rf "$BUILD_DIR"
}

# A waiter's view of the current lock, refreshed by watch_lock each poll:
#   WATCH_TOKEN   the owner's token ("" when the owner file is not written yet)
#   WATCH_QUIET   whole seconds (monotonic) since this waiter saw the owner's heartbeat last change
WATCH_TOKEN="unset" WATCH_BEAT="" WATCH_CHANGED=0 WATCH_QUIET=0
watch_lock() {
  local token beat now
  token=$(owner_field "$LOCK" token)
  beat=$(cat "$BUILDS/${token:-none}/heartbeat" 2>/dev/null || echo gone)
  now=$(uptime_cs)
  if [ "$token" != "$WATCH_TOKEN" ] || [ "$beat" != "$WATCH_BEAT" ]; then
    WATCH_TOKEN=$token WATCH_BEAT=$beat WATCH_CHANGED=$now
  fi
  WATCH_QUIET=$(((now - WATCH_CHANGED) / 100))
}

# Take over the lock the waiter has watched go quiet: the dead build's lock and files go, nobody else's.
# Several waiters judge the same lock dead at the same moment: a claim (mkdir, atomic) inside it picks
# one of them, and the token is checked before and after, so a lock taken anew is never moved.
take_over_lock() {
  local token=$WATCH_TOKEN aside who
  WATCH_TOKEN="unset"
  if lock_is_malformed "$LOCK"; then
    remove_malformed_lock && log "removed a stray ${LOCK##*/} that was not a lock folder (nothing changed it for ${WATCH_QUIET} s, TRYON_LOCK_STALE_S=$LOCK_STALE_S): taking the lock"
    return 0
  fi
  [ "$(owner_field "$LOCK" token)" = "$token" ] || return 0
  who=$(describe_owner "$LOCK")
  mkdir "$LOCK/claim-${token:-unnamed}" 2>/dev/null || return 0
  [ "$(owner_field "$LOCK" token)" = "$token" ] || return 0
  aside=$(move_lock_aside "$token" stale) || return 0
  rm -rf "$aside"
  [ -n "$token" ] && rm -rf "${BUILDS:?}/$token"
  log "took over the build lock from $who: its heartbeat had not moved for ${WATCH_QUIET} s (TRYON_LOCK_STALE_S=$LOCK_STALE_S)"
}

# Builds that died without a lock (they lost it, then crashed): a folder whose heartbeat has not moved
# since we first looked, at least the stale limit ago, is dead. Call it once early and once late.
SEEN_BUILDS=""
note_builds() {
  local folder beat
  SEEN_BUILDS_AT=$(uptime_cs)
  SEEN_BUILDS=""
  for folder in "$BUILDS"/*/; do
    [ -d "$folder" ] || continue
    folder=${folder%/}
    [ "${folder##*/}" = "$BUILD_ID" ] && continue
    beat=$(cat "$folder/heartbeat" 2>/dev/null || echo gone)
    SEEN_BUILDS="$SEEN_BUILDS${folder##*/}=$beat "
  done
}
sweep_dead_builds() {
  local entry name beat
  [ -n "$SEEN_BUILDS" ] || return 0
  [ $(($(uptime_cs) - SEEN_BUILDS_AT)) -ge $((LOCK_STALE_S * 100)) ] || return 0
  for entry in $SEEN_BUILDS; do
    name=${entry%%=*} beat=${entry#*=}
    [ "$(cat "$BUILDS/$name/heartbeat" 2>/dev/null || echo gone)" = "$beat" ] || continue
    [ "$(owner_field "$LOCK" token)" = "$name" ] && continue
    rm -rf "${BUILDS:?}/$name" && log "removed the files of dead build $name (no heartbeat for ${LOCK_STALE_S} s or more)"
  done
  return 0
}

# What a worker that restored (and so never waits) can still clean: a lock whose builder stopped (the
# build the manifest names, dead between publishing and releasing, or another), a stray file at the
# lock's name, dead build folders and lock folders moved aside by a killed takeover. Ages are read on the volume's own clock (the mtime
# of a file just written there), never this machine's, and judged at twice the stale limit.
sweep_leftovers() {
  local published_build=$1 fs_now limit folder token beat
  touch "$KEY_DIR/.clock.$BUILD_ID" 2>/dev/null || return 0
  fs_now=$(stat -c %Y "$KEY_DIR/.clock.$BUILD_ID")
  rm -f "$KEY_DIR/.clock.$BUILD_ID"
  limit=$((2 * LOCK_STALE_S))
  quiet_for() { echo $((fs_now - $(stat -c %Y "$1" 2>/dev/null || echo "$fs_now"))); }
  if lock_is_malformed "$LOCK" && [ "$(quiet_for "$LOCK")" -ge "$limit" ]; then
    remove_malformed_lock && log "removed a stray ${LOCK##*/} next to the published build: it was not a lock folder"
  fi
  token=$(owner_field "$LOCK" token)
  if [ -d "$LOCK" ] && ! lock_is_malformed "$LOCK"; then  # a lock whose builder is gone, next to a runtime
    beat=$BUILDS/${token:-none}/heartbeat
    [ -f "$beat" ] || beat=$LOCK
    if [ "$(quiet_for "$beat")" -ge "$limit" ]; then
      WATCH_TOKEN=$token WATCH_QUIET=$(quiet_for "$beat")
      take_over_lock >/dev/null 2>&1
      if [ "$(owner_field "$LOCK" token)" != "$token" ] || [ ! -d "$LOCK" ]; then
        if [ "$token" = "$published_build" ]; then
          log "removed the lock of build $token: it published, then stopped before releasing it"
        else
          log "removed the lock of build ${token:-(unnamed)}: its builder stopped (no heartbeat for ${WATCH_QUIET} s) and build $published_build is published"
        fi
      fi
    fi
  fi
  for folder in "$BUILDS"/*/ "$KEY_DIR"/.lock.*/; do
    [ -d "$folder" ] || continue
    folder=${folder%/}
    [ "${folder##*/}" = "$(owner_field "$LOCK" token)" ] && continue
    if [ -f "$folder/heartbeat" ]; then
      [ "$(quiet_for "$folder/heartbeat")" -ge "$limit" ] || continue
    else
      [ "$(quiet_for "$folder")" -ge "$limit" ] || continue
    fi
    rm -rf "$folder" && log "removed ${folder#"$KEY_DIR"/}, left by a stopped launcher"
  done
  return 0
}
