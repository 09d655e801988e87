"""
Moved to :mod:`vmqtw.testing.inprocess_broker`, so benchmarks can use it without
importing ``tests``; this name stays for the tests that import it here.
"""
import sys

from vmqtw.testing import inprocess_broker

sys.modules[__name__] = inprocess_broker
