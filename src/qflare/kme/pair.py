"""Both ends of a simulated KME pair in one process, each on its own HTTPS (mutual TLS) listener."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from dataclasses import dataclass

import uvicorn

from qflare.errors import QKDError
from qflare.kme.app import KMEEnd, create_kme_app
from qflare.kme.tls import MutualTLSProtocol, fixed_context, server_ssl_context
from qflare.qkd.keystore import KeyStore

__all__ = ["KMEListener", "KMEPairServer"]

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class KMEListener:
    """Where one KME end listens and with which server certificate.

    Parameters
    ----------
    end:
        The KME's identity and attached SAEs.
    port:
        TCP port (0 picks a free one).
    cert, key:
        Server certificate and private key (PEM files).
    """

    end: KMEEnd
    port: int
    cert: PathLike
    key: PathLike


def _listen(host: str, port: int) -> socket.socket:
    # proto must be IPPROTO_TCP (create_server leaves 0): asyncio then sets TCP_NODELAY on accepted
    # connections; without it Nagle delays each response body by the client's delayed ACK (~40 ms).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise QKDError(f"cannot listen on {host}:{port}: {exc}", reason="kme_unreachable") from None
    return sock


class KMEPairServer:
    """Both ends of a simulated KME pair in one process, each on its own HTTPS (mTLS) listener.

    Parameters
    ----------
    store:
        Key store shared by the two ends (filled by :class:`qflare.qkd.kme.BB84Link`).
    a, b:
        The two listeners.
    ca:
        CA certificate that issued the SAE client certificates.
    host:
        Address to bind (127.0.0.1 by default).

    Examples
    --------
    >>> server = KMEPairServer(store, a=..., b=..., ca="pki/ca.pem")  # doctest: +SKIP
    >>> server.start(); url_a, url_b = server.urls; ...; server.stop()  # doctest: +SKIP
    """

    def __init__(
        self, store: KeyStore, *, a: KMEListener, b: KMEListener, ca: PathLike, host: str = "127.0.0.1"
    ) -> None:
        self.store = store
        self.host = host
        self._sockets: list[socket.socket] = []
        self._servers: list[uvicorn.Server] = []
        try:
            self._configure(a, b, ca, host)
        except BaseException:
            for sock in self._sockets:
                sock.close()
            raise
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _configure(self, a: KMEListener, b: KMEListener, ca: PathLike, host: str) -> None:
        for local, remote in ((a, b), (b, a)):
            ctx = server_ssl_context(local.cert, local.key, ca)
            config = uvicorn.Config(
                create_kme_app(self.store, local.end, remote.end),
                http=MutualTLSProtocol,
                ssl_context_factory=fixed_context(ctx),
                lifespan="off",
                log_level="warning",
                access_log=False,
            )
            self._servers.append(uvicorn.Server(config))
            self._sockets.append(_listen(host, local.port))

    @property
    def ports(self) -> tuple[int, int]:
        return (self._sockets[0].getsockname()[1], self._sockets[1].getsockname()[1])

    @property
    def urls(self) -> tuple[str, str]:
        """Base URLs of KME A and KME B."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (f"https://{host}:{self.ports[0]}", f"https://{host}:{self.ports[1]}")

    def start(self, timeout: float = 10.0) -> None:
        """Serve in a background thread; return once both listeners accept connections."""
        if self._thread is not None:
            return

        async def both() -> None:
            await asyncio.gather(*(srv.serve(sockets=[s]) for srv, s in zip(self._servers, self._sockets, strict=True)))

        def run() -> None:
            try:
                asyncio.run(both())
            except BaseException as exc:  # surfaced by start()/stop()
                self._error = exc

        self._thread = threading.Thread(target=run, name="qkd-kme-pair", daemon=True)
        self._thread.start()
        done = threading.Event()
        for _ in range(int(timeout / 0.01)):
            if all(s.started for s in self._servers) or self._error or not self._thread.is_alive():
                done.set()
                break
            done.wait(0.01)
        if not all(s.started for s in self._servers):
            self.stop()
            raise QKDError(f"KME pair failed to start: {self._error!r}", reason="kme_unreachable")

    def stop(self) -> None:
        for srv in self._servers:
            srv.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        for sock in self._sockets:
            sock.close()

    def __enter__(self) -> KMEPairServer:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
