from sfd.daemon.cli import main

raise SystemExit(main())
