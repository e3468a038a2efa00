"""The package's version, written once: ``engine.__version__``, pyproject's
dynamic version and the ``user-agent`` the engine sends all read it from here."""

__version__ = "0.1.0"
