from aconvlib.cli import main

raise SystemExit(main())
