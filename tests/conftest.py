"""
Shared pytest configuration.

Hypothesis runs without deadlines: the machine is shared by parallel test
workers, and a deadline would turn load into flaky failures.
"""
from hypothesis import settings

settings.register_profile("vmqtw", deadline=None)
settings.load_profile("vmqtw")

#: The real-process fixtures (``nodes``) for every test module.
pytest_plugins = ["tests.nodeharness"]
