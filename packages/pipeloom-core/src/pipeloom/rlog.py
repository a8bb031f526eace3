"""The logging module's name in pipeloom 0.0.7, kept so its imports keep working.

``from pipeloom.rlog import console, logger, setup_logging`` gives the same objects as
``from pipeloom import ...``; new code can import them from ``pipeloom`` directly.
"""

from pipeloom.logs import console, logger, setup_logging

__all__ = ["console", "logger", "setup_logging"]
