"""Canonical binary encoding of the request header (envelope version 1).

Every field has exactly one encoding: fixed order, big-endian integers, length-prefixed strings of
restricted ASCII, no optional padding. ``RequestHeader.decode(b).encode() == b`` for every ``b``
that decodes, and decoding rejects anything else (trailing bytes, out-of-range lengths, characters
outside the allowed set, inconsistent key source). Byte layout (see ``docs/protocol.md``)::

    magic         4   "QFRQ"
    version       u16 1
    suite         u16 1
    key_source    u8  1 = mlkem, 2 = qkd, 3 = hybrid
    timestamp_ms  u64 Unix time in milliseconds
    nonce         u8 length (= 16) || 16 random bytes
    device_id     u8 length (1..128) || ASCII 0x21..0x7e
    method        u8 length (1..16)  || ASCII A-Z
    path          u16 length (1..2048) || ASCII 0x21..0x7e, first byte "/"
    round_id      u8 tag: 0 = null | 1 = string: u8 length (1..128) || ASCII 0x21..0x7e
                                   | 2 = integer: u64
    key_ids       u8 count (0..16) || count x (u8 length (1..128) || ASCII 0x21..0x7e)
    kem_ct        u16 length (1120 for mlkem/hybrid, 0 for qkd) || X-Wing ciphertext
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from qflare.crypto._xwing import CIPHERTEXT_SIZE
from qflare.errors import MalformedPayload

__all__ = [
    "HEADER_MAGIC",
    "MAX_HEADER_SIZE",
    "NONCE_SIZE",
    "SUITE_V1",
    "SUITE_V1_NAME",
    "VERSION",
    "KeySource",
    "RequestHeader",
]

HEADER_MAGIC: Final = b"QFRQ"
VERSION: Final = 1
SUITE_V1: Final = 1
SUITE_V1_NAME: Final = "QFLARE-v1: X-Wing(ML-KEM-768+X25519), id-MLDSA65-Ed25519-SHA512, HKDF-SHA256, AES-256-GCM"
NONCE_SIZE: Final = 16
MAX_HEADER_SIZE: Final = 16384
MAX_KEY_IDS: Final = 16

_TOKEN_RE: Final = re.compile(rb"[\x21-\x7e]{1,128}")
_METHOD_RE: Final = re.compile(rb"[A-Z]{1,16}")
_PATH_RE: Final = re.compile(rb"/[\x21-\x7e]{0,2047}")
_U64_MAX: Final = 2**64 - 1


class KeySource(enum.StrEnum):
    """Where the request key comes from."""

    MLKEM = "mlkem"
    """X-Wing (ML-KEM-768 + X25519) shared secret only."""
    QKD = "qkd"
    """A QKD key only (no KEM ciphertext)."""
    HYBRID = "hybrid"
    """Both the X-Wing secret and a QKD key; the request key stays secret if either does."""


_SOURCE_CODE: Final = {KeySource.MLKEM: 1, KeySource.QKD: 2, KeySource.HYBRID: 3}
_CODE_SOURCE: Final = {v: k for k, v in _SOURCE_CODE.items()}


def _ascii(value: str, pattern: re.Pattern[bytes], what: str) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str")
    try:
        raw = value.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"{what} must be printable ASCII") from None
    if not pattern.fullmatch(raw):
        raise ValueError(f"{what} has invalid characters or length: {value!r}")
    return raw


@dataclass(frozen=True, slots=True)
class RequestHeader:
    """The signed, authenticated-but-cleartext header of a request envelope.

    Constructing one validates every field (``ValueError``/``TypeError`` on a bad value);
    :meth:`decode` turns those into :class:`MalformedPayload`.
    """

    key_source: KeySource
    timestamp_ms: int
    nonce: bytes
    device_id: str
    method: str
    path: str
    round_id: str | int | None
    key_ids: tuple[str, ...]
    kem_ciphertext: bytes
    version: int = VERSION
    suite: int = SUITE_V1

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_source", KeySource(self.key_source))
        object.__setattr__(self, "key_ids", tuple(self.key_ids))
        if self.version != VERSION:
            raise ValueError("unsupported version")
        if self.suite != SUITE_V1:
            raise ValueError("unsupported suite")
        if isinstance(self.timestamp_ms, bool) or not isinstance(self.timestamp_ms, int):
            raise TypeError("timestamp_ms must be an int")
        if not 0 <= self.timestamp_ms <= _U64_MAX:
            raise ValueError("timestamp_ms out of range")
        if not isinstance(self.nonce, bytes) or len(self.nonce) != NONCE_SIZE:
            raise ValueError("nonce must be 16 bytes")
        _ascii(self.device_id, _TOKEN_RE, "device_id")
        _ascii(self.method, _METHOD_RE, "method")
        _ascii(self.path, _PATH_RE, "path")
        rid = self.round_id
        if isinstance(rid, bool):
            raise TypeError("round_id must be str, int or None")
        if isinstance(rid, int):
            if not 0 <= rid <= _U64_MAX:
                raise ValueError("integer round_id must be in 0..2**64-1")
        elif isinstance(rid, str):
            _ascii(rid, _TOKEN_RE, "round_id")
        elif rid is not None:
            raise TypeError("round_id must be str, int or None")
        if len(self.key_ids) > MAX_KEY_IDS:
            raise ValueError("at most 16 key ids")
        for kid in self.key_ids:
            _ascii(kid, _TOKEN_RE, "key id")
        if not isinstance(self.kem_ciphertext, bytes):
            raise TypeError("kem_ciphertext must be bytes")
        needs_kem = self.key_source in (KeySource.MLKEM, KeySource.HYBRID)
        needs_qkd = self.key_source in (KeySource.QKD, KeySource.HYBRID)
        if len(self.kem_ciphertext) != (CIPHERTEXT_SIZE if needs_kem else 0):
            raise ValueError(f"kem_ciphertext length does not match key_source {self.key_source.value}")
        if needs_qkd != bool(self.key_ids):
            raise ValueError(f"key_ids must be {'non-empty' if needs_qkd else 'empty'} for {self.key_source.value}")

    def encode(self) -> bytes:
        """The canonical header bytes (signed, and used as AEAD associated data)."""
        out = bytearray(HEADER_MAGIC)
        out += struct.pack(">HHBQ", self.version, self.suite, _SOURCE_CODE[self.key_source], self.timestamp_ms)
        out += bytes([len(self.nonce)]) + self.nonce
        dev = self.device_id.encode("ascii")
        out += bytes([len(dev)]) + dev
        meth = self.method.encode("ascii")
        out += bytes([len(meth)]) + meth
        path = self.path.encode("ascii")
        out += struct.pack(">H", len(path)) + path
        if self.round_id is None:
            out += b"\x00"
        elif isinstance(self.round_id, int):
            out += b"\x02" + struct.pack(">Q", self.round_id)
        else:
            rid = self.round_id.encode("ascii")
            out += b"\x01" + bytes([len(rid)]) + rid
        out += bytes([len(self.key_ids)])
        for kid in self.key_ids:
            raw = kid.encode("ascii")
            out += bytes([len(raw)]) + raw
        out += struct.pack(">H", len(self.kem_ciphertext)) + self.kem_ciphertext
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes, *, accepted_suites: Sequence[int] = (SUITE_V1,)) -> RequestHeader:
        """Parse canonical header bytes.

        Raises
        ------
        MalformedPayload
            ``reason="unsupported_version"`` for any version other than 1,
            ``"unsupported_suite"`` for a suite outside ``accepted_suites``, ``"malformed_envelope"``
            for anything else that is not a canonical v1 header.
        """
        r = _Reader(bytes(data))
        if r.take(4) != HEADER_MAGIC:
            raise _bad("not a QFLARE request header")
        version, suite = struct.unpack(">HH", r.take(4))
        if version != VERSION:
            raise MalformedPayload(f"envelope version {version} is not accepted", reason="unsupported_version")
        if suite not in accepted_suites or suite != SUITE_V1:
            raise MalformedPayload(f"suite {suite} is not accepted", reason="unsupported_suite")
        code, timestamp_ms = struct.unpack(">BQ", r.take(9))
        if code not in _CODE_SOURCE:
            raise _bad("unknown key source")
        nonce = r.take(r.u8())
        device_id = r.ascii(r.u8())
        method = r.ascii(r.u8())
        path = r.ascii(r.u16())
        tag = r.u8()
        round_id: str | int | None
        if tag == 0:
            round_id = None
        elif tag == 1:
            round_id = r.ascii(r.u8())
        elif tag == 2:
            (round_id,) = struct.unpack(">Q", r.take(8))
        else:
            raise _bad("bad round_id tag")
        key_ids = tuple(r.ascii(r.u8()) for _ in range(r.u8()))
        kem_ct = r.take(r.u16())
        r.end()
        try:
            return cls(
                key_source=_CODE_SOURCE[code],
                timestamp_ms=timestamp_ms,
                nonce=nonce,
                device_id=device_id,
                method=method,
                path=path,
                round_id=round_id,
                key_ids=key_ids,
                kem_ciphertext=kem_ct,
                version=version,
                suite=suite,
            )
        except (ValueError, TypeError) as exc:
            raise _bad(str(exc)) from None


def _bad(message: str) -> MalformedPayload:
    return MalformedPayload(message, reason="malformed_envelope")


class _Reader:
    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise _bad("truncated")
        out = self._data[self._pos : end]
        self._pos = end
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def ascii(self, n: int) -> str:
        raw = self.take(n)
        if not raw.isascii():
            raise _bad("non-ASCII text field")
        return raw.decode("ascii")

    def end(self) -> None:
        if self._pos != len(self._data):
            raise _bad("trailing bytes")
