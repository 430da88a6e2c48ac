"""On-host tools of imaging-exchange: one CLI, `exchange`."""

__version__ = "0.1.0"
