"""Markers for the tests that need the real registry parts of `testkit.registry`."""

from __future__ import annotations

import os

import pytest

from testkit.registry import (
    CONTAINERD,
    CTR,
    REGISTRY,
    SKOPEO,
    Containerd,
    Image,
    Registry,
    free_port,
    skopeo_pull,
    verify_dir_copy,
    write_oci_image,
)

needs_registry = pytest.mark.skipif(
    not (REGISTRY and SKOPEO), reason="docker-registry and skopeo are installed by `make test`"
)
needs_containerd = pytest.mark.skipif(
    not (CONTAINERD and CTR) or os.geteuid() != 0,
    reason="containerd (installed by `make test`) runs as root",
)

__all__ = [
    "Containerd",
    "Image",
    "Registry",
    "free_port",
    "needs_containerd",
    "needs_registry",
    "skopeo_pull",
    "verify_dir_copy",
    "write_oci_image",
]
