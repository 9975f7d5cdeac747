# smoke.sh JOB_ID: run the deployed wrapper once in a throwaway server folder.
# Answer: rc=EXIT_STATUS, then the job's state file.
sp_tmpdir=$(mktemp -d) || exit 90
SOLVERPILOT_SERVER_DIR=$sp_tmpdir "$HOME/.solverpilot/bin/job_wrapper.sh" "$1" sh -c : </dev/null
echo "rc=$?"
cat "$sp_tmpdir/jobs/$1.status" 2>/dev/null
exit 0
