"""dfget: the peer engine and the `dfget URL -o FILE` command on top of it."""

__version__ = "0.1.0"
