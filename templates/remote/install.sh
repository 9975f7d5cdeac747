# install.sh DIGEST SECONDS DB SMOKE_ID: installing.sh's sp_install DIGEST DB SMOKE_ID, if its
# rename comes within SECONDS of the start (its answer and exit codes are described there).
sp_deadline "$2" # (sp_in_time: true until SECONDS have passed)
sp_install "$1" "$3" "$4"
