from solverpilot_deploy.entry import run

raise SystemExit(run())
