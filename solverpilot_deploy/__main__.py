from solverpilot_deploy.cli import main

raise SystemExit(main())
