"""The network lab: hosts as network namespaces on an isolated bridge, each host's link
shaped (tc tbf), delayed (an NFQUEUE delayer), lossy (an XDP program) or cut, for
the tests and benchmarks that need a network slower and worse than loopback.

    with Lab(["a", "b", "c"], link=Link(up=8 * MiB, down=8 * MiB, delay=0.005)) as lab:
        subprocess.run(lab.command("a", ["python", "-m", "x", lab.address("b")]))

Root only (`require_lab` says why not); `python -m testkit.netlab check` shows what the
kernel offers, `python -m testkit.netlab down` removes what a killed lab left. See
docs/netlab.md.
"""

from .lab import Lab
from .plan import Host, Link
from .system import LabError, require_lab

__all__ = ["Host", "Lab", "LabError", "Link", "require_lab"]
