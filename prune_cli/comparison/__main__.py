import sys

from prune_cli.comparison import main

sys.exit(main())
