# probe.sh: what the host is, what its tools can do and what push would find there (probing.sh's
# sp_probe: its answer is described there). Exit: 0.
sp_probe
exit 0
