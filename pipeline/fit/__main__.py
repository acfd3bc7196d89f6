from .evaluation import main

raise SystemExit(main())
