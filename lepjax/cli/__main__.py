"""`python -m lepjax.cli` is `lepjax`."""

import sys

from lepjax.cli.main import main

sys.exit(main())
