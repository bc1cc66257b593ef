"""A real Redis (Debian's `redis-server`) for the cluster tests: on 127.0.0.1, on a port
picked free once and kept across a stop and a start (the outage tests stop it and start
it again where the supernodes expect it), with a config of its own: protected mode, no
snapshots, its files in a folder of the test's, a password if asked."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import redis
import trio
import trio.lowlevel

REDIS_SERVER = shutil.which("redis-server")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (Redis refuses port 0: it cannot say which
    port it took)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """`await server.start()`, `await server.stop()` (SIGTERM), `server.kill()`; `url`
    is redis://127.0.0.1:PORT/0 (without the password)."""

    def __init__(self, folder: Path, password: str | None = None) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed (make test installs it)")
        self.folder = folder
        self.password = password
        self.port = free_port()
        self.process: trio.Process | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "redis.conf"
        lines = [
            "bind 127.0.0.1",
            f"port {self.port}",
            "protected-mode yes",
            'save ""',
            "appendonly no",
            f"dir {folder}",
            "daemonize no",
            'logfile ""',
        ]
        if password is not None:
            quoted = password.replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'requirepass "{quoted}"')
        self.config.write_text("\n".join(lines) + "\n")
        self.log = folder / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        """A blocking client of this server (for a test to look or write in it)."""
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5
        )

    async def start(self) -> None:
        """Start it and wait until it answers a PING (with its password, if any)."""
        assert REDIS_SERVER is not None
        with open(self.log, "ab") as log:  # noqa: ASYNC230 (opened once, at start)
            self.process = await trio.lowlevel.open_process(
                [REDIS_SERVER, str(self.config)], stdout=log, stderr=log
            )
        with trio.move_on_after(START_TIMEOUT):
            while not await trio.to_thread.run_sync(self._answers):
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited: {self.log.read_text()[-2000:]}")
                await trio.sleep(0.05)
            return
        raise RuntimeError(f"redis-server did not answer: {self.log.read_text()[-2000:]}")

    def _answers(self) -> bool:
        client = self.client()
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False
        finally:
            client.close()

    async def stop(self) -> None:
        """SIGTERM and wait (SIGKILL past STOP_TIMEOUT); its port is free after."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        with trio.move_on_after(STOP_TIMEOUT):
            await process.wait()
        if process.poll() is None:
            process.kill()
            await process.wait()
