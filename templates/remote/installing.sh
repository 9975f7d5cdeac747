# installing.sh: sp_install DIGEST DB SMOKE_ID, the install (install.sh; push.sh after its
# probe), once lib.sh's sp_deadline has started the clock. Functions only, no step: remote.py's
# STEP_NEEDS puts this file (and server_db.sh) before the steps that use it.
# It installs the wrapper carried below (after the first line, the DB's schema) as
# ~/.solverpilot/bin/job_wrapper.sh; then, with DB "db", sets up the DB as init_db.sh does
# (server_db.sh's sp_init_db), and with a SMOKE_ID other than "-", runs the new wrapper once as
# job SMOKE_ID in a throwaway server folder (sp_smoke: rc=, its state file).
# Each part done says how long it took: seconds_PART=S.SS (PART: install, init_db, smoke).
# It goes to a temporary file beside the live one, is checked there (mode 0755, bash -n, its
# sha256 against DIGEST) and only then renamed over the old file, if that happens before the
# deadline and sp-deploy is still listening; otherwise the host keeps its old wrapper. The
# temporary file never outlives the step. Its folders are created 0700; one that its group or
# others can write is made private (a "repaired=" line says so), one that is a symbolic link
# or not the user's is refused: another user could replace the wrapper there.
# The step exits: 0 installed (and the rest done); 10 bash -n rejected it; 11 checksum mismatch
# (prints sha256=); 12 cannot install (a folder in the way, a folder not writable); 13 too late;
# 14 no sha256 tool; 15 the write of the new wrapper failed (a full disk: the writer's own
# message comes before error=); 16 a folder another user could change. In these cases the old
# wrapper is kept. Once it is installed ("installed"): 17 the DB set-up failed (error=); 18 the
# smoke run could not start. It returns when all is done.
# shellcheck disable=SC2329 # not every step needs it
sp_install() {
  sp_now
  digest=$1 db=$2 smoke=$3 start=$sp_t
  dir=.solverpilot/bin target=.solverpilot/bin/job_wrapper.sh
  # shellcheck disable=SC2119 # (no FILE: nothing to hash yet)
  [ -n "$sp_sha" ] || sp_find_sha256 || exit 14
  umask 077
  for d in .solverpilot "$dir"; do
    # each folder is checked before anything is created in it (mkdir -p would follow a link),
    # also one made here: a default ACL can give others what the umask keeps from them
    if [ ! -e "$d" ] && [ ! -L "$d" ]; then
      err=$(mkdir "$d" 2>&1) || [ -d "$d" ] || { echo "error=cannot create ~/$d: ${err##*: }"; exit 12; }
    fi
    sp_unsafe "$d"
    why=$sp_why
    case $why in
      '') ;;
      'is writable by group or others')
        chmod go-w "$d" || { echo "error=~/$d $why and cannot be made private"; exit 16; }
        echo "repaired=~/$d is writable by group or others: made private" ;;
      *)
        echo "error=~/$d $(printf '%s' "$why" | head -n 1): another user could replace the wrapper there; remove it, then push again"
        exit 16 ;;
    esac
  done
  [ ! -d "$target" ] || { echo "error=a folder is in the way"; exit 12; }
  tmp=$(mktemp "$dir/.job_wrapper.sh.XXXXXX" 2>&1) || { echo "error=cannot write to ~/$dir: ${tmp##*: }"; exit 12; }
  sp_tmp=$tmp
  # the writer's complaint (No space left on device) goes into the answer, before error=
  { IFS= read -r schema && cat >"$tmp"; } 2>&1 <<'SP_PAYLOAD' || { echo "error=cannot write the new wrapper to ~/$dir"; exit 15; }
SP_PAYLOAD
  err=$(chmod 755 "$tmp" 2>&1) || { echo "error=cannot make the new wrapper executable: ${err##*: }"; exit 12; }
  err=$(/bin/bash -n "$tmp" 2>&1) || { echo "error=$err"; exit 10; }
  got=$(sp_sha256 "$tmp")
  [ "$got" = "$digest" ] || { echo "sha256=$got"; exit 11; }
  sp_in_time || exit 13
  # on the channel itself (fd 3, see end.sh): when sp-deploy has gone, this fails and the host
  # keeps its old wrapper
  echo checked >&3 || exit 13
  err=$(mv -f "$tmp" "$target" 2>&1) || { echo "error=${err##*: }"; exit 12; }
  sp_tmp=''
  # straight to the channel, framed (end.sh's sed holds what it passes on until it ends, and a
  # DB step that hangs would hold this line with it): sp-deploy learns at once that the new
  # wrapper is in place, whatever the rest does; the token, only in this script, cannot be forged
  # by a start-up file
  printf '%s installed\n' "$sp_token" >&3 2>/dev/null || :
  sp_took install "$start"
  if [ "$db" = db ]; then
    sp_init_db "$schema" || exit 17
    sp_took init_db "$sp_t"
  fi
  if [ "$smoke" != - ]; then
    sp_smoke "$smoke" || exit 18
    sp_took smoke "$sp_t"
  fi
}
