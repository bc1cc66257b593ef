"""The benchmarks' nginx: testkit's (kept here for the benchmarks that import it)."""

from testkit.nginx import free_port, nginx, nginx_binary

__all__ = ["free_port", "nginx", "nginx_binary"]
