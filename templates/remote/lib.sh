# lib.sh: the start of every remote step (sp-deploy puts it before the step's own lines).
# Run as `/bin/sh -s -- TOKEN ARG...` with the script on stdin, whatever the login shell.
# The answer is framed: "@@SP-BEGIN TOKEN" before it and "@@SP-END TOKEN STATUS" after it, each
# on a line of its own, so that whatever a login banner or a start-up file prints is never
# read as part of it. A file named in sp_tmp (a folder in sp_tmpdir) is removed at exit,
# however the step ends.
sp_token=$1
shift
sp_tmp='' sp_tmpdir=''
# shellcheck disable=SC2329 # invoked by the EXIT trap
sp_exit() {
  sp_rc=$?
  trap '' HUP INT TERM PIPE
  [ -z "$sp_tmp" ] || rm -f -- "$sp_tmp"
  [ -z "$sp_tmpdir" ] || rm -rf -- "$sp_tmpdir"
  printf '\n@@SP-END %s %s\n' "$sp_token" "$sp_rc"
}
trap sp_exit EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 141' PIPE
printf '\n@@SP-BEGIN %s\n' "$sp_token"
cd || exit 20
# the server folder, as the wrapper finds it (the login shell's start-up files may set it);
# ./ keeps a relative one from reading as an option
sp_server=${SOLVERPILOT_SERVER_DIR:-.solverpilot-server}
case $sp_server in /*) ;; *) sp_server=./$sp_server ;; esac

# sp_find_sha256: sp_sha becomes the first sha256 tool that hashes "abc" right, or stays empty
# shellcheck disable=SC2329 # not every step needs it
sp_find_sha256() {
  sp_sha=''
  for sp_c in sha256sum 'busybox sha256sum' 'shasum -a 256' 'openssl dgst -sha256 -r'; do
    # shellcheck disable=SC2086 # the tool's name and options, split on purpose
    if [ "$(printf abc | $sp_c 2>/dev/null | cut -d' ' -f1)" = \
      ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad ]; then
      sp_sha=$sp_c
      return 0
    fi
  done
  return 1
}

# sp_sha256 FILE: the file's sha256, in hex
# shellcheck disable=SC2329 # not every step needs it
sp_sha256() {
  # shellcheck disable=SC2086 # the tool's name and options, split on purpose
  $sp_sha "$1" 2>/dev/null | cut -d' ' -f1
}

# step

# sp_logout_kills: true when systemd-logind kills this user's processes at logout (its
# KillUserProcesses=yes, the last setting read wins) and linger is off for the user
# shellcheck disable=SC2329 # not every step needs it
sp_logout_kills() {
  sp_k=$(cat /etc/systemd/logind.conf /etc/systemd/logind.conf.d/*.conf 2>/dev/null |
    sed -n 's/^[[:space:]]*KillUserProcesses[[:space:]]*=[[:space:]]*//p' | tail -n 1)
  case $sp_k in yes | true | on | 1) ;; *) return 1 ;; esac
  [ ! -e "/var/lib/systemd/linger/${USER:-$(id -un)}" ]
}
