"""A network with a cloud metadata service, for one trio run: names and routes.

`FakeNetwork.install()` puts a hostname resolver and a socket factory in the running
trio loop (`trio.socket.set_custom_hostname_resolver`, `set_custom_socket_factory`):
- `names[host]`: the addresses a name resolves to (other names: the system resolver,
  or none with `system_resolver=False`: IP literals only);
- `routes[(ip, port)]`: where a connection to that address really goes, a server on
  127.0.0.1, as a cloud VM's network takes 169.254.169.254:80 to its metadata
  service. Sockets are real; only the destination of a connect is rewritten;
- `connects`: every (ip, port) a connect was attempted to, before rewriting: what the
  code under test tried to reach.
Everything in the run that uses trio sockets sees it (the supernode, dfget, httpx on
trio); a subprocess does not.
"""

from __future__ import annotations

import socket
from typing import Any

import trio
from trio._socket import _SocketType


class FakeNetwork:
    def __init__(self, *, system_resolver: bool = True) -> None:
        # False: a name not in `names` is looked up nowhere (only IP literals resolve).
        self.system_resolver = system_resolver
        self.names: dict[str, list[str]] = {}
        self.routes: dict[tuple[str, int], tuple[str, int]] = {}
        self.connects: list[tuple[str, int]] = []

    def install(self) -> FakeNetwork:
        trio.socket.set_custom_hostname_resolver(_Resolver(self))
        trio.socket.set_custom_socket_factory(_Factory(self))
        return self

    def resolve_name(self, name: str) -> list[str] | None:
        """The addresses `name` resolves to now (None: the system resolver's)."""
        return self.names.get(name)

    def tried(self, ip: str) -> bool:
        """Whether anything tried to connect to `ip` (any port)."""
        return any(host == ip for host, _ in self.connects)


class _Resolver(trio.abc.HostnameResolver):
    def __init__(self, network: FakeNetwork) -> None:
        self.network = network

    async def getaddrinfo(
        self,
        host: bytes | None,
        port: bytes | str | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[Any]:
        name = host.decode("ascii") if isinstance(host, bytes) else host
        addresses = self.network.resolve_name(name or "")
        if addresses is None:
            if not self.network.system_resolver:
                flags |= socket.AI_NUMERICHOST
            return await trio.to_thread.run_sync(
                socket.getaddrinfo, host, port, family, type, proto, flags
            )
        number = int(port.decode() if isinstance(port, bytes) else port or 0)
        answers: list[Any] = []
        for address in addresses:
            v6 = ":" in address
            if family not in (0, socket.AF_INET6 if v6 else socket.AF_INET):
                continue
            answers.append(
                (
                    socket.AF_INET6 if v6 else socket.AF_INET,
                    socket.SOCK_STREAM,
                    socket.IPPROTO_TCP,
                    "",
                    (address, number, 0, 0) if v6 else (address, number),
                )
            )
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers

    async def getnameinfo(self, sockaddr: Any, flags: int) -> tuple[str, str]:
        return await trio.to_thread.run_sync(socket.getnameinfo, sockaddr, flags)


class _Factory(trio.abc.SocketFactory):
    def __init__(self, network: FakeNetwork) -> None:
        self.network = network

    def socket(
        self, family: int | None = None, type: int | None = None, proto: int | None = None
    ) -> trio.socket.SocketType:
        sock = socket.socket(family or socket.AF_INET, type or socket.SOCK_STREAM, proto or 0)
        return _RoutedSocket(sock, self.network)


class _RoutedSocket(_SocketType):
    def __init__(self, sock: socket.socket, network: FakeNetwork) -> None:
        super().__init__(sock)
        self._network = network

    async def connect(self, address: Any) -> None:
        if self.family == socket.AF_UNIX:  # a local socket: nothing to route
            await super().connect(address)
            return
        host, port = str(address[0]), int(address[1])
        self._network.connects.append((host, port))
        target = self._network.routes.get((host, port))
        if target is not None:
            to_host, to_port = target
            if self.family == socket.AF_INET6:
                address = (f"::ffff:{to_host}", to_port, 0, 0)
            else:
                address = (to_host, to_port)
        await super().connect(address)
