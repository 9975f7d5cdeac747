# init_db.sh: server_db.sh's sp_init_db with the schema carried below (one line: push runs it
# when only the server folders' modes need a change; after an install, install.sh runs it).
# Exit: 0; 1 the DB cannot be created; 21 an unsafe server folder (lib.sh's sp_server_safe).
IFS= read -r schema <<'SP_PAYLOAD'
SP_PAYLOAD
sp_init_db "$schema"
