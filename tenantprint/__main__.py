from tenantprint.cli import main

raise SystemExit(main())
