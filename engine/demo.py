"""``python -m engine.demo`` (``make demo``): the demo, :mod:`engine.app.demo`, under its
first name, which the Makefile and the README use."""

import sys

from engine.app.demo import main

if __name__ == "__main__":
    sys.exit(main())
