"""`python -m tentman_dev …`: the `tentman-dev` command."""

import sys

from tentman_dev.cli import main

sys.exit(main())
