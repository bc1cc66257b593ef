"""dfdaemon: the per-host agent (registry mirror, proxy, long-lived peer). Not yet built."""

__version__ = "0.1.0"
