"""`python -m lepjax` is `lepjax`."""

import sys

from lepjax.cli import main

sys.exit(main())
