# server_db.sh: the set-up that follows an install (install.sh; init_db.sh for the DB alone).
# Functions only, no step: remote.py's STEP_NEEDS puts this file before the steps that use it.

# sp_init_db SCHEMA: create server.db in the server folder (~/.solverpilot-server unless
# SOLVERPILOT_SERVER_DIR says otherwise) with SCHEMA (one line of SQL that ends by setting its
# version), in one transaction that waits up to 10 s for another writer (several pushes into one
# home at once); the DB is 0600, the folder 0700. First, the folders of the server folder the
# user owns are made 0700 (tightened=PATH MODE_BEFORE: older versions made them 0755, or the
# user's umask 0775). A DB already there gets the columns it lacks (the installed wrapper's
# --migrate; warning= with its last words when it could not).
# Status: 0; 1 the DB cannot be created; 21 an unsafe server folder (error=, lib.sh's
# sp_server_safe).
# shellcheck disable=SC2329 # not every step needs it
sp_init_db() {
  # (checked also when made here: a default ACL can give others what the umask keeps from them)
  [ -d "$sp_server" ] || mkdir -p -- "$sp_server" || return 1
  sp_server_safe tighten || return 21
  if [ -e "$sp_server/server.db" ]; then # the columns it lacks, by the wrapper installed
    sp_w=$HOME/.solverpilot/bin/job_wrapper.sh
    [ ! -x "$sp_w" ] || sp_out=$("$sp_w" --migrate 2>&1 </dev/null 3>&-) ||
      echo "warning=$(sp_wrapper_said "$sp_out")"
    return 0
  fi
  printf 'BEGIN IMMEDIATE;\n%s\nCOMMIT;\n' "$1" |
    sqlite3 -init /dev/null -bail -cmd '.timeout 10000' "$sp_server/server.db"
}

# sp_smoke JOB_ID: run the installed wrapper once in a throwaway server folder: rc=EXIT_STATUS,
# then the job's state file (one line), then true; false when no folder could be made. The
# folder is ~/.solverpilot/JOB_ID (the user's, checked by the install: no temporary folder, which
# a TMPDIR some clusters set may lack), made here with its jobs/ and locks/ (the wrapper finds
# them: no mkdir of its own); one that is there already is never used or removed
# shellcheck disable=SC2329 # not every step needs it
sp_smoke() {
  [ ! -e "$HOME/.solverpilot/$1" ] && [ ! -L "$HOME/.solverpilot/$1" ] || return 1
  sp_tmpdir=$HOME/.solverpilot/$1
  # (-m: a default ACL on ~/.solverpilot would open them to others, and the wrapper refuse them)
  mkdir -m 700 -- "$sp_tmpdir" "$sp_tmpdir/jobs" "$sp_tmpdir/locks" || return 1
  SOLVERPILOT_SERVER_DIR=$sp_tmpdir "$HOME/.solverpilot/bin/job_wrapper.sh" "$1" sh -c : </dev/null
  echo "rc=$?"
  # (no cat: the read builtin; a state file is one line, and a line without its end is read)
  sp_line=''
  { IFS= read -r sp_line || [ -n "$sp_line" ]; } 2>/dev/null <"$sp_tmpdir/jobs/$1.status" &&
    printf 'state=%s\n' "$sp_line"
  return 0
}

# sp_took PART START: seconds_PART=S.SS, the time since START (lib.sh's sp_t, hundredths)
# shellcheck disable=SC2329 # not every step needs it
sp_took() {
  sp_now
  sp_d=$((sp_t - $2))
  printf 'seconds_%s=%d.%02d\n' "$1" $((sp_d / 100)) $((sp_d % 100))
}
