"""vmqtw: a clustered MQTT broker on Twisted, modelled on VerneMQ."""

__version__ = "0.1.0"
