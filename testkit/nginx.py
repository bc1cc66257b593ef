"""A private nginx on 127.0.0.1 serving one folder (installed with apt if missing), for
the benchmarks (a fast origin) and the tests of `dfget -r` (autoindex pages).

Never the Debian default config (it listens on every interface): the config, pid file
and logs live in the caller's own work folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

CONFIG = """\
{user}worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format requests '$request_method $request_uri $status $body_bytes_sent $connection';
    access_log {access_log};
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {work}/tmp;
    proxy_temp_path {work}/tmp;
    fastcgi_temp_path {work}/tmp;
    uwsgi_temp_path {work}/tmp;
    scgi_temp_path {work}/tmp;
    server {{
        listen {host}:{port};
        root {root};
{server_extra}
    }}
}}
"""


NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def nginx_binary() -> str:
    """Path of nginx, installing Debian's nginx-light (services kept stopped) if needed."""
    if NGINX:
        return NGINX
    if os.geteuid() != 0:
        raise SystemExit("nginx is not installed; run as root or `apt-get install nginx-light`")
    policy = Path("/usr/sbin/policy-rc.d")
    made = not policy.exists()
    if made:  # keep the package's own service (on 0.0.0.0:80) from starting
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nginx-light"],
            check=True,
            env=env,
        )
    finally:
        if made:
            policy.unlink()
    return "/usr/sbin/nginx"


def free_port() -> int:
    """A port nothing listens on now. The one place where a port is picked by binding,
    closing and reusing it: nginx refuses `listen 127.0.0.1:0` ("invalid port") and has
    no other way to say where it listens. Should another program take the port first,
    nginx fails to start and says so."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(host: str, port: int, pid: Path, *, inside: bool) -> bool:
    """Whether nginx listens yet: it accepts a connection, or, in another network
    namespace (`inside`), where this process cannot connect, it wrote its pid file
    (which nginx does only once its listening sockets are open)."""
    if inside:
        return pid.exists()
    try:
        socket.create_connection((host, port), timeout=0.2).close()
    except OSError:
        return False
    return True


@contextmanager
def nginx(
    root: Path,
    work: Path,
    *,
    server_extra: str = "",
    access_log: bool = False,
    host: str = "127.0.0.1",
    prefix: Sequence[str] = (),
) -> Iterator[str]:
    """Serve `root` on HOST (127.0.0.1), run under PREFIX (a network lab's `ip netns exec
    NS`: then HOST is its address there); yields the base URL. `server_extra`: more
    lines for the server block (locations); `access_log`: log requests to
    WORK/access.log (each line `METHOD PATH STATUS BYTES CONNECTION`, the last nginx's
    serial number of the connection)."""
    binary = nginx_binary()
    work.mkdir(parents=True, exist_ok=True)
    (work / "tmp").mkdir(exist_ok=True)
    port = free_port()
    conf = work / "nginx.conf"
    log = f"{work}/access.log requests" if access_log else "off"
    conf.write_text(
        CONFIG.format(
            # As root, the worker too: pytest's tmp folders are closed to `nobody`.
            user="user root;\n" if os.geteuid() == 0 else "",
            work=work,
            host=host,
            port=port,
            root=root,
            server_extra=server_extra,
            access_log=log,
        )
    )
    pid = work / "nginx.pid"
    pid.unlink(missing_ok=True)
    argv = [*prefix, binary, "-c", str(conf), "-p", str(work)]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not _listening(host, port, pid, inside=bool(prefix)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"nginx did not start: {proc.stderr.read().decode() if proc.stderr else ''}"
                )
            time.sleep(0.05)
        yield f"http://{host}:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
