"""dfdaemon: the per-host agent (registry mirror, forward proxy, long-lived peer)."""

__version__ = "0.1.0"
