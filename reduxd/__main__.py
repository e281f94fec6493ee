from reduxd.cli import main

raise SystemExit(main())
