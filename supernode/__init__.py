"""The supernode: CDN (origin → sealed pieces on disk), scheduler and peer server."""

__version__ = "0.1.0"
