"""``python -m revhpo``: the ``revhpo`` command line."""

import sys

from revhpo.service.cli import main

sys.exit(main())
