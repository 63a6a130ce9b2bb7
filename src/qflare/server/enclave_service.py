"""One enclave in front of several web workers: :class:`EnclaveService` and :class:`RemoteEnclaveAggregator`.

``qflare server --workers K`` with an enclave starts one :class:`EnclaveService` in the supervising
process: it owns the only :class:`~qflare.enclave.backend.EnclaveAggregator` (the enclave process, its
pipe and shared region, the sealed checkpoints, the copies of uncheckpointed updates, the device
registry's statements) and serves it on a Unix socket in a directory only this user can open. Each
worker talks to it through a :class:`RemoteEnclaveAggregator`, which has the server-facing methods of
``EnclaveAggregator``; the service runs one call at a time into the enclave (its lock), so the enclave
sees one caller and its round state (one update per device, ids counted once, the model chain) is the
same whichever worker forwarded an update.

Who may do what:

- every worker: attestation, request opening and response sealing, ``validate`` (the service brings
  the device's registration up to date from the database first), ``accumulate`` and ``replay``
  (idempotent: the enclave counts an update id once), ``counted`` (which of some update ids, read from
  stored updates' public headers, the enclave counts: the owner reads back and replays only the
  others), task and checkpoint signatures;
- only the round owner (:mod:`qflare.server.lease`): ``begin_round``, ``finalize``, ``abort_round``. Each
  carries the owner's fencing token; the service checks it against ``qflare_round_lease`` and refuses a
  stale one (``stale_round_owner``), so an owner that lost its lease cannot finalize or reset a round.
  A follower's ``begin_round``/``abort_round`` are no-ops (it only attaches to the owner's round), and
  ``begin_round`` of a round the enclave already aggregates on the same base model keeps its counts;
- ``finalize`` runs only if the enclave counted exactly the updates the database holds for the round
  (else ``round_changed``, nothing signed): the owner closes under the round's close barrier
  (:meth:`qflare.server.lease.PostgresLease.closing`), so no worker can commit an update between its
  count and the close.

The socket carries what the enclave's own interface carries (envelopes, sealed blobs, public models,
signatures): nothing the host may not see. Frames: ``u32 length | JSON header`` then the header's
``blobs`` (byte lengths) back to back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shutil
import socket
import socketserver
import struct
import tempfile
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import text

from qflare import errors
from qflare.enclave.backend import EnclaveUpdateHandle
from qflare.enclave.client import EnclaveIdentity, OpenedRequest
from qflare.enclave.quote import EnclavePublicKeys
from qflare.enclave.statements import RoundTask
from qflare.enclave.stored import parse_stored, stored_update_id
from qflare.errors import Conflict, EnclaveError, NotFound, QFlareError
from qflare.fl.port import SealedUpdate, UpdateInput, ValidatedUpdate
from qflare.fl.spec import ModelSpec

if TYPE_CHECKING:
    from qflare.enclave.backend import EnclaveAggregator
    from qflare.server.lease import RoundLease
    from qflare.server.storage import Repository

__all__ = ["EnclaveService", "EnclaveServiceClient", "RemoteEnclaveAggregator"]

log = logging.getLogger("qflare.enclave.service")

_LEN: Final = struct.Struct(">I")
_MAX_HEADER: Final = 1 << 20
_MAX_BLOB: Final = 1 << 31
SOCKET_NAME: Final = "enclave.sock"
_CONNECT_ATTEMPTS: Final = 20


# -- framing ----------------------------------------------------------------------------------------

def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError("the other end closed the connection")
        got += k
    return buf


def _send(sock: socket.socket, header: dict[str, Any], blobs: Sequence[bytes] = ()) -> None:
    head = json.dumps({**header, "blobs": [len(b) for b in blobs]}, separators=(",", ":")).encode()
    sock.sendall(_LEN.pack(len(head)) + head)
    for b in blobs:
        if b:
            sock.sendall(b)


def _recv(sock: socket.socket) -> tuple[dict[str, Any], list[bytes]]:
    (n,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
    if n > _MAX_HEADER:
        raise ConnectionError("frame header too large")
    header = json.loads(bytes(_recv_exact(sock, n)))
    if not isinstance(header, dict) or not isinstance(header.get("blobs"), list):
        raise ConnectionError("malformed frame")
    blobs: list[bytes] = []
    for size in header["blobs"]:
        if not isinstance(size, int) or not 0 <= size <= _MAX_BLOB:
            raise ConnectionError("malformed frame")
        blobs.append(bytes(_recv_exact(sock, size)) if size else b"")
    return header, blobs


def _error_header(exc: QFlareError) -> dict[str, Any]:
    return {"error": {"type": type(exc).__name__, "reason": exc.reason, "message": exc.message[:500]}}


def _raise_error(err: dict[str, Any]) -> None:
    name = err.get("type")
    cls = getattr(errors, name, None) if isinstance(name, str) and name in errors.__all__ else None
    if not (isinstance(cls, type) and issubclass(cls, QFlareError)):
        cls = EnclaveError
    if cls is errors.Unauthenticated:
        raise errors.Unauthenticated(str(err.get("message", "")))
    raise cls(str(err.get("message", ""))[:500], reason=str(err.get("reason") or "") or None)


# -- the service (in the supervising process) -------------------------------------------------------

class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if uid != os.getuid():  # the directory is 0700 already; a process of another user is not a worker
            log.warning("enclave service: refused a connection from uid %d (pid %d)", uid, pid)
            return
        log.debug("enclave service: worker pid %d connected", pid)
        while True:
            try:
                header, blobs = _recv(sock)
            except (ConnectionError, OSError, ValueError):
                return  # the worker went away (or was killed mid-call): nothing of it is kept
            try:
                result, out = self.server.service.dispatch(str(header.get("op", "")), header, blobs)
                reply: dict[str, Any] = {"ok": result}
                if header.get("op") == "validate":
                    log.debug("enclave service: update validated for round %s via worker pid %d",
                              header.get("round_id"), pid)
            except QFlareError as exc:
                reply, out = _error_header(exc), []
            except Exception as exc:  # noqa: BLE001 - a bug here must not kill the service thread silently
                log.exception("enclave service: %s failed", header.get("op"))
                reply, out = _error_header(EnclaveError(f"{type(exc).__name__}", reason="enclave_service_error")), []
            try:
                _send(sock, reply, out)
            except OSError:
                return


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False
    # Workers open connections in bursts (one per concurrent upload); the default backlog of 5 refused them
    # with EAGAIN at 500 devices.
    request_queue_size = 1024
    service: EnclaveService


class EnclaveService:
    """Serves one :class:`~qflare.enclave.backend.EnclaveAggregator` to the workers of one server.

    Parameters
    ----------
    aggregator:
        The enclave (launched, its registrar attached).
    repo:
        The server's database: fencing tokens (``qflare_round_lease``) and the stored update count a
        round must have when it is finalized.
    directory:
        Where the socket goes (default: a new directory in the temporary directory, mode 0700).
    """

    def __init__(self, aggregator: EnclaveAggregator, repo: Repository, *, directory: Path | None = None) -> None:
        self.aggregator = aggregator
        self.repo = repo
        self._own_dir = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="qflare-enclave-")) if directory is None else directory
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.socket_path = self.directory / SOCKET_NAME
        self._control = threading.Lock()  # fence check and round control, one at a time
        # Every call, one at a time, answer copied out included: the enclave writes each answer to the
        # same half of the shared region, so a second worker's call could overwrite it before it was
        # copied (a worker got another device's request payload back; two devices of the 4-worker load
        # run could not open their answers). The enclave client now also copies under its own lock.
        self._calls = threading.Lock()
        self._max_token = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> EnclaveService:
        """Bind the socket and serve in a background thread."""
        if self.socket_path.exists():
            self.socket_path.unlink()
        server = _Server(str(self.socket_path), _Handler)
        os.chmod(self.socket_path, 0o600)
        server.service = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="enclave-service", daemon=True)
        self._thread.start()
        log.info("enclave service listening on %s", self.socket_path)
        return self

    def close(self) -> None:
        """Stop serving, stop the enclave process (sealed state stays on disk)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.aggregator.close()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- fencing -----------------------------------------------------------------------------------

    def _fence(self, token: Any) -> None:
        """Refuse a round-control call unless ``token`` is the current holding of the round lease."""
        if not isinstance(token, int) or token <= 0:
            raise Conflict("only the round owner may begin, finalize or abort rounds", reason="not_round_owner")
        with self.repo.engine.connect() as c:
            current = int(c.execute(text("SELECT token FROM qflare_round_lease WHERE id = 1")).scalar() or 0)
        if token != current or token < self._max_token:
            raise Conflict(f"fencing token {token} is stale (the round lease is at {max(current, self._max_token)})",
                           reason="stale_round_owner")
        self._max_token = token

    # -- calls -------------------------------------------------------------------------------------

    def dispatch(self, op: str, h: dict[str, Any], blobs: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
        with self._calls:
            return self._dispatch(op, h, blobs)

    def _dispatch(self, op: str, h: dict[str, Any], blobs: list[bytes]) -> tuple[dict[str, Any], list[bytes]]:
        agg = self.aggregator
        if op == "identity":
            ident = agg.identity()
            return ({"measurement": ident.measurement.hex(), "signer": ident.signer.hex(),
                     "isv_prod_id": ident.isv_prod_id, "isv_svn": ident.isv_svn, "debug": ident.debug,
                     "simulated": ident.simulated, "platform": ident.platform, "dumpable": ident.dumpable,
                     "modules": list(ident.modules)}, [ident.public_keys.encode()])
        if op == "quote":
            return {}, [agg.quote(blobs[0])]
        if op == "open_request":
            opened = agg.open_request(blobs[0], allowed_key_sources=list(h["sources"]),
                                      extra_secret=blobs[1] if h.get("extra") else None)
            return ({"device_id": opened.device_id, "method": opened.method, "path": opened.path,
                     "round_id": opened.round_id}, [opened.request_hash, opened.payload])
        if op == "seal_response":
            return {}, [agg.seal_response(blobs[0], blobs[1])]
        if op == "sign_task":
            task = RoundTask(round_id=int(h["round_id"]), model_sha256=str(h["model_sha256"]),
                             deadline_at=int(h["deadline_ms"]) / 1000)
            return {}, [agg.sign_task(task)]
        if op == "sign_note":
            return {}, [agg.sign_note(blobs[0], blobs[1:])]
        if op == "ledger_head":
            size, root = agg.ledger_head()
            return {"size": size}, [root]
        if op == "sync_device":
            if agg.registrar is not None:
                agg.sync_device(str(h["device_id"]))
            return {}, []
        if op == "validate":
            return self._validate(int(h["round_id"]), blobs[0], h.get("sources"),
                                  blobs[1] if h.get("extra") else None)
        if op == "accumulate":
            handle = EnclaveUpdateHandle(update_id=str(h["update_id"]), request_hash=None)
            agg.accumulate(ValidatedUpdate(round_id=int(h["round_id"]), num_examples=0, train_loss=None, sha256="",
                                           size_bytes=len(blobs[0]), stored=blobs[0], handle=handle))
            return {}, []
        if op == "replay":
            rid = int(h["round_id"])
            _, update_id = stored_update_id(blobs[0])
            if not agg.is_counted(rid, update_id):  # the owner replays what another worker counted: skip it here,
                agg.replay(rid, blobs[0])           # not after decrypting 4 MB again inside
            return {}, []
        if op == "counted":  # which of these update ids the enclave counts in the round (host-readable ids)
            rid = int(h["round_id"])
            ids = h.get("update_ids")
            if not isinstance(ids, list) or not all(isinstance(u, str) for u in ids):
                raise EnclaveError("counted takes a list of update ids", reason="ecall_refused")
            return {"counted": [agg.is_counted(rid, u) for u in ids]}, []
        if op == "begin_round":
            return self._begin(int(h["round_id"]), blobs[0], str(h["spec"]), h.get("token"))
        if op == "finalize":
            return self._finalize(int(h["round_id"]), h.get("token"))
        if op == "abort_round":
            with self._control:
                self._fence(h.get("token"))
                agg.abort_round(int(h["round_id"]))
            return {}, []
        if op == "model_signature":
            return {}, [agg.model_signature(int(h["round_id"]))]
        if op == "published_entry":
            entry = agg.published_entry(int(h["round_id"]))
            return {"entry": entry is not None}, [entry or b""]
        raise EnclaveError(f"unknown enclave service call {op[:32]!r}", reason="ecall_refused")

    def _validate(self, round_id: int, envelope: bytes, sources: Any,
                  extra: bytes | None) -> tuple[dict[str, Any], list[bytes]]:
        v = self.aggregator.validate_envelope(round_id, envelope, extra_secret=extra,
                                              allowed_key_sources=list(sources) if sources is not None else None)
        handle = v.handle
        assert isinstance(handle, EnclaveUpdateHandle)
        # The worker has the envelope: only the stored form's sealed prefix goes back.
        parts = parse_stored(v.stored)
        prefix = v.stored[: len(v.stored) - len(envelope)] if parts.envelope == envelope else v.stored
        return ({"num_examples": v.num_examples, "train_loss": v.train_loss, "sha256": v.sha256,
                 "size_bytes": v.size_bytes, "norm": v.norm, "update_id": handle.update_id, "dp_epsilon": v.dp_epsilon,
                 "with_envelope": parts.envelope == envelope, "entry": v.ledger_entry is not None},
                [prefix, handle.request_hash or b"", v.ledger_entry or b""])

    def _begin(self, round_id: int, base_model: bytes, spec_json: str,
               token: Any) -> tuple[dict[str, Any], list[bytes]]:
        with self._control:
            if self.aggregator.round_base_sha256(round_id) == hashlib.sha256(base_model).hexdigest():
                return {"begun": False}, []  # already aggregated here on that base: keep what it counted
            self._fence(token)
            self.aggregator.begin_round(round_id, base_model, ModelSpec.from_json(spec_json))
            return {"begun": True}, []

    def _finalize(self, round_id: int, token: Any) -> tuple[dict[str, Any], list[bytes]]:
        with self._control:
            self._fence(token)
            counted = self.aggregator.counted_updates(round_id)
            stored = len(self.repo.update_device_ids(round_id))
            if counted != stored:
                # Signing now would move the enclave's model chain past an aggregate the database would
                # refuse: refuse instead, the owner recounts from the database.
                raise Conflict(f"round {round_id}: the enclave counted {counted} updates, the database holds "
                               f"{stored}", reason="round_changed")
            model = self.aggregator.finalize(round_id)
            entry = self.aggregator.published_entry(round_id)
            return ({"entry": entry is not None, "flagged": self.aggregator.flagged_devices(round_id)},
                    [model, self.aggregator.model_signature(round_id), entry or b""])


# -- the client (in each worker) --------------------------------------------------------------------

class EnclaveServiceClient:
    """A pool of connections to an :class:`EnclaveService`; :meth:`_call` is the one way in."""

    launcher = None  # the enclave runs in the service's process; checks use the identity it reports

    def __init__(self, socket_path: str | os.PathLike[str], *, timeout: float = 300.0) -> None:
        self.socket_path = str(socket_path)
        self.timeout = timeout
        self._idle: queue.LifoQueue[socket.socket] = queue.LifoQueue()

    def _connect(self) -> socket.socket:
        for attempt in range(_CONNECT_ATTEMPTS):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.socket_path)
                return sock
            except BlockingIOError:  # the service's backlog is full for a moment: wait, then again
                sock.close()
                time.sleep(0.05 * (attempt + 1))
            except OSError as exc:
                sock.close()
                raise EnclaveError(f"the enclave service at {self.socket_path} does not answer ({exc.strerror})",
                                   reason="enclave_unavailable") from None
        raise EnclaveError(f"the enclave service at {self.socket_path} accepts no more connections",
                           reason="enclave_unavailable")

    def _call(self, op: str, header: dict[str, Any] | None = None,
              blobs: Sequence[bytes] = ()) -> tuple[dict[str, Any], list[bytes]]:
        try:
            sock = self._idle.get_nowait()
        except queue.Empty:
            sock = self._connect()
        try:
            _send(sock, {"op": op, **(header or {})}, blobs)
            reply, out = _recv(sock)
        except (OSError, ConnectionError, ValueError) as exc:
            sock.close()
            raise EnclaveError(f"the enclave service failed during {op}: {exc}", reason="enclave_unavailable") from None
        self._idle.put(sock)
        if "error" in reply:
            _raise_error(reply["error"])
        return dict(reply.get("ok") or {}), out

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


class RemoteEnclaveAggregator:
    """What a worker holds instead of an :class:`~qflare.enclave.backend.EnclaveAggregator`: the same
    server-facing methods, each a call to the :class:`EnclaveService`.

    Parameters
    ----------
    socket_path:
        The service's socket.
    lease:
        This worker's round lease: round control is sent with its fencing token, and only while it is held.
    """

    shared = True
    """Several workers feed one enclave: the orchestrator keeps (does not rebuild) its round on a takeover."""

    def __init__(self, socket_path: str | os.PathLike[str], *, lease: RoundLease | None = None,
                 timeout: float = 300.0) -> None:
        self.enclave = EnclaveServiceClient(socket_path, timeout=timeout)
        self.lease = lease
        self.registrar = None  # the service keeps the enclave's registry in step with the database
        self.clock = None
        self._identity: EnclaveIdentity | None = None
        self._signatures: dict[int, bytes] = {}
        self._entries: dict[int, bytes | None] = {}
        self._flagged: dict[int, list[str]] = {}

    def _token(self) -> int:
        return self.lease.token if self.lease is not None else 0

    # -- identity --------------------------------------------------------------------------------

    def identity(self) -> EnclaveIdentity:
        h, (keys,) = self.enclave._call("identity")
        ident = EnclaveIdentity(
            measurement=bytes.fromhex(h["measurement"]), signer=bytes.fromhex(h["signer"]),
            isv_prod_id=int(h["isv_prod_id"]), isv_svn=int(h["isv_svn"]), debug=bool(h["debug"]),
            simulated=bool(h["simulated"]), platform=str(h["platform"]), public_keys=EnclavePublicKeys.decode(keys),
            dumpable=bool(h["dumpable"]), modules=tuple(h["modules"]),
        )
        self._identity = ident
        return ident

    def public_keys(self) -> EnclavePublicKeys:
        # The keys change only with a new enclave identity (a restart on another state directory).
        return (self._identity or self.identity()).public_keys

    def quote(self, nonce: bytes) -> bytes:
        return self.enclave._call("quote", {}, [bytes(nonce)])[1][0]

    # -- requests --------------------------------------------------------------------------------

    def open_request(self, envelope: bytes, *, allowed_key_sources: Collection[str] | None = None,
                     extra_secret: bytes | None = None) -> OpenedRequest:
        sources = sorted(allowed_key_sources) if allowed_key_sources is not None else ["hybrid", "mlkem"]
        h, (request_hash, payload) = self.enclave._call(
            "open_request", {"sources": sources, "extra": extra_secret is not None},
            [bytes(envelope), *([bytes(extra_secret)] if extra_secret is not None else [])])
        return OpenedRequest(request_hash=request_hash, device_id=str(h["device_id"]), method=str(h["method"]),
                             path=str(h["path"]), round_id=h["round_id"], payload=payload)

    def seal_response(self, request_hash: bytes, payload: bytes) -> bytes:
        return self.enclave._call("seal_response", {}, [bytes(request_hash), bytes(payload)])[1][0]

    # -- AggregationBackend ----------------------------------------------------------------------

    def begin_round(self, round_id: int, base_model: bytes, spec: ModelSpec) -> None:
        token = self._token()
        if token == 0:
            return  # a follower attaches to the owner's round; it never (re)starts one
        self.enclave._call("begin_round", {"round_id": round_id, "spec": spec.to_json(), "token": token},
                           [bytes(base_model)])

    def validate(self, round_id: int, update: UpdateInput) -> ValidatedUpdate:
        if not isinstance(update, SealedUpdate):
            raise TypeError("the enclave service validates sealed updates (SealedUpdate) only")
        extra = update.extra_secret
        sources = sorted(update.allowed_key_sources) if update.allowed_key_sources else None
        h, (prefix, request_hash, entry) = self.enclave._call(
            "validate", {"round_id": round_id, "sources": sources, "extra": extra is not None},
            [update.envelope, *([extra] if extra is not None else [])])
        stored = prefix + update.envelope if h["with_envelope"] else prefix
        return ValidatedUpdate(
            round_id=round_id, num_examples=int(h["num_examples"]), train_loss=h["train_loss"],
            sha256=str(h["sha256"]), size_bytes=int(h["size_bytes"]), stored=stored,
            handle=EnclaveUpdateHandle(update_id=str(h["update_id"]), request_hash=request_hash or None),
            norm=h["norm"], ledger_entry=entry if h["entry"] else None, dp_epsilon=h["dp_epsilon"],
        )

    def accumulate(self, update: ValidatedUpdate) -> None:
        handle = update.handle
        if not isinstance(handle, EnclaveUpdateHandle):
            raise TypeError("this update was not validated by the enclave")
        try:
            self.enclave._call("accumulate", {"round_id": update.round_id, "update_id": handle.update_id},
                               [update.stored])
        except NotFound as exc:
            if exc.reason != "unknown_round":
                raise
            # The owner closed or restarted the round in the enclave after this update was committed: it
            # counts the update from the database (its close is refused until the enclave has every one).
            log.info("round %d is not open in the enclave; the owner counts this update from the database",
                     update.round_id)

    def replay(self, round_id: int, stored: bytes) -> None:
        self.enclave._call("replay", {"round_id": round_id}, [bytes(stored)])

    HEAD_BYTES = 4096
    """Stored bytes that :meth:`counted_devices` needs of an update: its public header (about 200 bytes)."""

    def counted_devices(self, round_id: int, heads: Mapping[str, bytes]) -> set[str]:
        """The devices whose stored update (by the first :attr:`HEAD_BYTES` of it, ``heads``) the enclave
        already counts in ``round_id``: the owner need not read those megabytes back to replay them.

        A head that does not parse as a stored update is not counted (the owner replays it whole, and the
        enclave refuses it if it is not one)."""
        ids: dict[str, str] = {}
        for device_id, head in heads.items():
            try:
                rid, update_id = stored_update_id(head)
            except QFlareError:
                continue
            if rid == round_id:
                ids[device_id] = update_id
        devices = list(ids)
        counted: set[str] = set()
        for i in range(0, len(devices), 1000):  # a header of about 40 KB per call
            chunk = devices[i:i + 1000]
            h, _ = self.enclave._call("counted", {"round_id": round_id, "update_ids": [ids[d] for d in chunk]})
            counted.update(d for d, yes in zip(chunk, h["counted"], strict=True) if yes)
        return counted

    def finalize(self, round_id: int) -> bytes:
        h, (model, signature, entry) = self.enclave._call("finalize", {"round_id": round_id, "token": self._token()})
        self._signatures[round_id] = signature
        self._entries[round_id] = entry if h["entry"] else None
        self._flagged[round_id] = [str(d) for d in h.get("flagged", [])]
        return model

    def flagged_devices(self, round_id: int) -> list[str]:
        """The enclave rule's verdicts on the round this worker finalized (once; then forgotten)."""
        return self._flagged.pop(round_id, [])

    def abort_round(self, round_id: int) -> None:
        token = self._token()
        if token == 0:
            return  # only the owner ends rounds in the shared enclave
        self.enclave._call("abort_round", {"round_id": round_id, "token": token})

    def model_signature(self, round_id: int) -> bytes:
        if round_id in self._signatures:
            return self._signatures[round_id]
        return self.enclave._call("model_signature", {"round_id": round_id})[1][0]

    def published_entry(self, round_id: int) -> bytes | None:
        if round_id in self._entries:
            return self._entries[round_id]
        h, (entry,) = self.enclave._call("published_entry", {"round_id": round_id})
        return entry if h["entry"] else None

    def sign_task(self, task: RoundTask) -> bytes:
        return self.enclave._call("sign_task", {"round_id": task.round_id, "model_sha256": task.model_sha256,
                                                "deadline_ms": task.deadline_ms})[1][0]

    def sign_round_task(self, round_id: int, model_sha256: str, deadline_at: float) -> bytes:
        return self.sign_task(RoundTask(round_id=round_id, model_sha256=model_sha256, deadline_at=deadline_at))

    # -- registry, ledger ------------------------------------------------------------------------

    def sync_device(self, device_id: str) -> None:
        self.enclave._call("sync_device", {"device_id": device_id})

    def sync_devices(self, device_ids: Collection[str]) -> None:
        for device_id in device_ids:
            self.sync_device(device_id)

    def sign_note(self, text_: bytes, proof: Sequence[bytes] = ()) -> bytes:
        return self.enclave._call("sign_note", {}, [bytes(text_), *map(bytes, proof)])[1][0]

    def ledger_head(self) -> tuple[int, bytes]:
        h, (root,) = self.enclave._call("ledger_head")
        return int(h["size"]), root

    def close(self) -> None:
        """Close this worker's connections (the service and its enclave keep running)."""
        self.enclave.close()
