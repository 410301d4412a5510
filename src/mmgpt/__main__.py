from mmgpt.cli import main

raise SystemExit(main())
