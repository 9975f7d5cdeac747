# install.sh DIGEST SECONDS: install the wrapper carried below as ~/.solverpilot/bin/job_wrapper.sh.
# It goes to a temporary file beside the live one, is checked there (mode 0755, bash -n, its
# sha256 against DIGEST) and only then renamed over the old file, if that happens within
# SECONDS of the start and sp-deploy is still listening; otherwise the host keeps its old
# wrapper. The temporary file never outlives the step.
# Exit: 0 installed; 10 bash -n rejected it; 11 checksum mismatch (prints sha256=); 12 cannot
# install (a folder in the way, a folder not writable); 13 too late; 14 no sha256 tool.
digest=$1 end=$(($(date +%s) + $2))
dir=.solverpilot/bin target=.solverpilot/bin/job_wrapper.sh
sp_find_sha256 || exit 14
err=$(mkdir -p "$dir" 2>&1) || { echo "error=cannot create ~/$dir: ${err##*: }"; exit 12; }
[ ! -d "$target" ] || { echo "error=a folder is in the way"; exit 12; }
tmp=$(mktemp "$dir/.job_wrapper.sh.XXXXXX" 2>&1) || { echo "error=cannot write to ~/$dir: ${tmp##*: }"; exit 12; }
sp_tmp=$tmp
cat >"$tmp" <<'SP_PAYLOAD'
SP_PAYLOAD
chmod 755 "$tmp" || exit 12
err=$(/bin/bash -n "$tmp" 2>&1) || { echo "error=$err"; exit 10; }
got=$(sp_sha256 "$tmp")
[ "$got" = "$digest" ] || { echo "sha256=$got"; exit 11; }
[ "$(date +%s)" -lt "$end" ] || exit 13
# on the channel itself (fd 3, see end.sh): when sp-deploy has gone, this fails and the host
# keeps its old wrapper
echo checked >&3 || exit 13
err=$(mv -f "$tmp" "$target" 2>&1) || { echo "error=${err##*: }"; exit 12; }
sp_tmp=''
echo installed
