# push.sh DIGEST SECONDS DB SMOKE_ID FACTS: probe and install in one step, for a host whose facts
# sp-deploy knows from an earlier probe. A host that has the wrapper DIGEST already, with nothing
# to repair, answers as probing.sh's sp_current says, exit 0. Otherwise, first the probe
# (probing.sh's sp_probe and its answer); then, when the host's facts are the ones sp-deploy picked the profile and checked the
# requirements from (their lines hash to FACTS), nothing needs more than an install (sp_plain)
# and the wrapper there is not DIGEST already: "install=begun", then the install (installing.sh's
# sp_install DIGEST DB SMOKE_ID, its answer and exit codes), if its rename comes within SECONDS
# of the start. Otherwise the answer is the probe's alone, exit 0: sp-deploy goes on from it as
# from probe.sh's.
sp_deadline "$2" # (sp_in_time: true until SECONDS have passed)
! sp_current "$1" || exit 0
sp_probe
[ "$sp_plain" = yes ] && [ -n "$sp_sha" ] && [ "$sp_wrapper" != "$1" ] || exit 0
# shellcheck disable=SC2086 # the tool's name and options, split on purpose
sp_h=$(printf '%s' "$sp_facts" | $sp_sha 2>/dev/null)
[ "${sp_h%% *}" = "$5" ] || exit 0
echo install=begun
sp_install "$1" "$3" "$4"
