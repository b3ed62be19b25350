from vfs.cli import main

raise SystemExit(main())
