"""tests/plugin_user/ holds an application's test file as a user would write it.

tests/test_testing_plugin.py copies it into an empty directory and runs pytest
there, outside this project's configuration (no conftest, no trio_mode), to
show the engine_mock fixture arrives with the installed package.  It is not
collected as part of this project's own suite.
"""

collect_ignore_glob = ["test_*.py"]
