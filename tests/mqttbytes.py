"""
Moved to :mod:`vmqtw.testing.mqttbytes`, so benchmarks can use it without
importing ``tests``; this name stays for the tests that import it here.
"""
import sys

from vmqtw.testing import mqttbytes

sys.modules[__name__] = mqttbytes
