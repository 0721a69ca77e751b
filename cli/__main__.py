"""`python -m cli ...`: the `stagechat` command without its console script (child servers in tests)."""

import sys

from cli.main import main

sys.exit(main())
