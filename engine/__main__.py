"""``python -m engine`` runs the ``engine`` command."""

import sys

from engine.app.cli import main

sys.exit(main())
