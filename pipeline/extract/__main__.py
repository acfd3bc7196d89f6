from .plan import main

raise SystemExit(main())
