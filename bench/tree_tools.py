"""bench/tree.py's nginx source and its baselines (wget, aria2c, curl).

nginx serves the tree twice: /html/ with autoindex's HTML pages (what wget -r reads)
and /json/ with its JSON pages (what dfget -r reads fastest: each entry carries the
file's size and mtime, so no HEAD per file is needed to know it unchanged).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from bench.nginx import nginx
from bench.tree_files import SMALL, Source, Tree


def aria2c_binary() -> str:
    """Path of aria2c, installing Debian's aria2 (as root) if it is missing."""
    found = shutil.which("aria2c")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("aria2c is not installed; run as root or `apt-get install aria2`")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "aria2"], check=True, env=env
    )
    return shutil.which("aria2c") or "/usr/bin/aria2c"


def url_list(base: str, names: Sequence[str], path: Path) -> Path:
    """An aria2c input file: each URL, then its `out=` name under the -d folder."""
    path.write_text("".join(f"{base}/{name}\n  out={name}\n" for name in names))
    return path


@contextmanager
def nginx_source(
    tree: Tree, work: Path, baselines: Sequence[str], *, index: str = "json"
) -> Iterator[Source]:
    """nginx serving the tree; dfget -r reads its `index` pages (json or html)."""
    work.mkdir(parents=True, exist_ok=True)
    extra = (
        f"        location /html/ {{ alias {tree.root}/; autoindex on; }}\n"
        f"        location /json/ {{ alias {tree.root}/; autoindex on; autoindex_format json; }}"
    )
    with nginx(tree.root, work / "nginx", server_extra=extra) as base:
        files = f"{base}/json"  # the files themselves, whichever location
        listing = url_list(files, sorted(tree.sizes), work / "aria2c.list")
        commands = {
            "wget -r": lambda out: [
                *("wget", "-r", "-np", "-nH", "--cut-dirs=1", "-q", "-e", "robots=off"),
                *("-P", str(out), f"{base}/html/"),
            ],
            "aria2c -i (-j 4)": lambda out: [
                *(aria2c_binary(), "-i", str(listing), "-j", "4", "-x", "1", "-d", str(out)),
                *("-q", "--allow-overwrite=true", "--auto-file-renaming=false"),
            ],
        }
        chosen = {name: argv for name, argv in commands.items() if name.split()[0] in baselines}
        small = sorted(tree.subset(SMALL))

        def curl(out: Path) -> list[str]:
            argv = ["curl", "-sf", "-Z", "--parallel-max", "4", "--create-dirs"]
            for name in small:
                argv += [f"{files}/{name}", "-o", str(out / name)]
            return argv

        yield Source(
            name="nginx",
            baselines=chosen,
            small_baselines={"curl -Z (4 at once)": curl},
            url=f"{base}/{index}/",
        )
