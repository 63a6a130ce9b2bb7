"""C2SP signed-note (the ``golang.org/x/mod/sumdb/note`` format): keys, signing, opening, and
QFLARE's hybrid (Ed25519 + ML-DSA-65) signature lines.

A note is UTF-8 text ending in a newline, a blank line, then one signature line per signature::

    <text>\\n
    \\n
    — <key name> base64(<4-byte key ID> || <signature>)\\n

A verifier key is ``<name>+<8 hex key ID>+base64(<type byte> || <public key>)`` with key ID
``SHA-256(name || 0x0A || type || public key)[:4]`` (big-endian). Type 0x01 is Ed25519 over the text;
0x04 is a tlog-cosignature (:mod:`qflare.ledger.cosignature`); :data:`MLDSA65_SIGNATURE_TYPE` (0xff)
is QFLARE's ML-DSA-65 line, over ``MLDSA65_NOTE_DOMAIN || text`` with the FIPS 204 context
``qflare/v1/ledger-tree-head``.

Opening follows sumdb: a signature from an unknown (name, key ID) is kept as unverified and ignored;
a known key whose signature fails rejects the whole note; a note with no verified signature is
rejected; exact duplicate lines are dropped; more than 100 signature lines is malformed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Protocol, runtime_checkable

from qflare.crypto._ed25519_note import (
    ED25519_PUBLIC_KEY_SIZE,
    MLDSA65_PUBLIC_KEY_SIZE,
    Ed25519Signer,
    Ed25519Verifier,
    Mldsa65Signer,
    Mldsa65Verifier,
)
from qflare.crypto.contexts import SigningContext
from qflare.crypto.secret_access import SecretKeyAccess, require_token
from qflare.crypto.signing import SigningKey, VerifyKey
from qflare.errors import InvalidSignature, LedgerIntegrityError, MalformedPayload

__all__ = [
    "ED25519_SIGNATURE_TYPE",
    "MAX_SIGNATURES",
    "MLDSA65_NOTE_CONTEXT",
    "MLDSA65_NOTE_DOMAIN",
    "MLDSA65_SIGNATURE_TYPE",
    "Ed25519NoteSigner",
    "Ed25519NoteVerifier",
    "HybridLogKey",
    "HybridNoteSigner",
    "Mldsa65NoteVerifier",
    "Note",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "UnverifiedNoteError",
    "assemble_note",
    "is_valid_key_name",
    "key_id",
    "open_note",
    "parse_note",
    "parse_verifier_key",
    "sign_note",
]

ED25519_SIGNATURE_TYPE: Final = 0x01
MLDSA65_SIGNATURE_TYPE: Final = 0xFF
"""QFLARE's ML-DSA-65 signature type (C2SP reserves 0xff for experimental/private types)."""
MLDSA65_NOTE_DOMAIN: Final = b"qflare/v1/signed-note/mldsa65\n"
"""Prefix of the message the ML-DSA-65 line signs, so it can never be a signature over bare text."""
MLDSA65_NOTE_CONTEXT: Final = SigningContext.TREE_HEAD.value
"""FIPS 204 context string of the ML-DSA-65 line."""
MAX_SIGNATURES: Final = 100
"""sumdb's limit on signature lines per note (C2SP requires accepting at least 16)."""

_SIG_PREFIX: Final = "\u2014 ".encode()
_SIG_SPLIT: Final = b"\n\n"


def _malformed(message: str = "malformed note") -> LedgerIntegrityError:
    return LedgerIntegrityError(message, reason="malformed_note")


def is_valid_key_name(name: str) -> bool:
    """A key name is non-empty, has no whitespace and no ``+`` (sumdb ``isValidName``)."""
    return bool(name) and not any(c.isspace() for c in name) and "+" not in name


def key_id(name: str, type_and_key: bytes) -> int:
    """``SHA-256(name || 0x0A || type || public key)[:4]`` as a big-endian integer."""
    return int.from_bytes(hashlib.sha256(name.encode() + b"\n" + type_and_key).digest()[:4], "big")


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ValueError("invalid base64") from None


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line: key ``name``, 32-bit ``key_id`` and the ``signature`` bytes after the ID."""

    name: str
    key_id: int
    signature: bytes

    def line(self) -> bytes:
        """``— <name> base64(key ID || signature)\\n``, UTF-8."""
        payload = self.key_id.to_bytes(4, "big") + self.signature
        return _SIG_PREFIX + self.name.encode() + b" " + base64.b64encode(payload) + b"\n"


@runtime_checkable
class NoteVerifier(Protocol):
    """Something that checks one kind of signature line for one (``name``, ``key_id``)."""

    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> int: ...

    def verify(self, text: bytes, signature: bytes) -> None:
        """Return ``None`` if ``signature`` (without the key ID) is valid over ``text``; else raise
        :class:`LedgerIntegrityError` (``invalid_signature``)."""
        ...


@runtime_checkable
class NoteSigner(Protocol):
    """Produces the signature lines for a note text. The enclave implements this so the private
    key never leaves it; :class:`Ed25519NoteSigner` and :class:`HybridNoteSigner` are local ones."""

    def sign_note(self, text: bytes) -> list[NoteSignature]:
        """Signatures over ``text`` (which ends in a newline), in the order they go in the note."""
        ...


def _bad_signature(name: str, kid: int) -> LedgerIntegrityError:
    return LedgerIntegrityError(f"invalid signature for key {name}+{kid:08x}", reason="invalid_signature")


class _KeyedVerifier:
    """What every verifier key shares: a valid name, a public key, and the key ID over both.

    Subclasses set :attr:`sig_type` and call :meth:`_bind` with their key's verifier object.
    """

    sig_type: ClassVar[int]

    def _bind(self, name: str, make_key: Callable[[bytes], Any], public_key: bytes) -> None:
        if not is_valid_key_name(name):
            raise MalformedPayload(f"invalid key name {name!r}", reason="invalid_verifier_key")
        self._name = name
        self._key = make_key(public_key)
        self._id = key_id(name, bytes([self.sig_type]) + self._key.public_bytes())

    @property
    def name(self) -> str:
        return self._name

    @property
    def key_id(self) -> int:
        return self._id

    def verifier_key(self) -> str:
        """``name+hexkeyid+base64(type || pub)``."""
        return _format_vkey(self._name, self._id, bytes([self.sig_type]) + self._key.public_bytes())


class Ed25519NoteVerifier(_KeyedVerifier):
    """A type-0x01 (Ed25519) note verifier key.

    Parameters
    ----------
    name:
        The key name (no whitespace, no ``+``).
    public_key:
        The 32-byte Ed25519 public key.
    """

    sig_type = ED25519_SIGNATURE_TYPE

    def __init__(self, name: str, public_key: bytes) -> None:
        self._bind(name, Ed25519Verifier, public_key)

    def public_bytes(self) -> bytes:
        """The 32-byte public key."""
        return bytes(self._key.public_bytes())

    def verify(self, text: bytes, signature: bytes) -> None:
        try:
            self._key.verify(signature, text)
        except InvalidSignature:
            raise _bad_signature(self._name, self._id) from None


class Mldsa65NoteVerifier(_KeyedVerifier):
    """QFLARE's ML-DSA-65 note verifier key (type :data:`MLDSA65_SIGNATURE_TYPE`).

    Parameters
    ----------
    name:
        The key name; the same name as the log's Ed25519 key, so both lines name one signer.
    public_key:
        The 1952-byte ML-DSA-65 public key (the first half of the enclave's composite key).
    """

    sig_type = MLDSA65_SIGNATURE_TYPE

    def __init__(self, name: str, public_key: bytes) -> None:
        self._bind(name, Mldsa65Verifier, public_key)

    def public_bytes(self) -> bytes:
        """The 1952-byte public key."""
        return bytes(self._key.public_bytes())

    def verify(self, text: bytes, signature: bytes) -> None:
        try:
            self._key.verify(signature, MLDSA65_NOTE_DOMAIN + text, MLDSA65_NOTE_CONTEXT)
        except InvalidSignature:
            raise _bad_signature(self._name, self._id) from None


def _format_vkey(name: str, kid: int, type_and_key: bytes) -> str:
    return f"{name}+{kid:08x}+{base64.b64encode(type_and_key).decode()}"


def parse_verifier_key(vkey: str) -> NoteVerifier:
    """Parse ``name+hexkeyid+base64(type || pub)`` for types 0x01, 0x04 and 0xff.

    Raises
    ------
    MalformedPayload
        ``invalid_verifier_key`` (shape, name, base64, key length), ``verifier_key_id_mismatch``
        (the key ID is not the hash of name and key) or ``unknown_key_type``.
    """
    from qflare.ledger.cosignature import COSIGNATURE_TYPE, CosignatureVerifier

    name, _, rest = vkey.partition("+")
    hex_id, _, b64 = rest.partition("+")
    try:
        raw = _b64decode(b64)
        kid = int(hex_id, 16)
    except ValueError:
        raise MalformedPayload("invalid verifier key", reason="invalid_verifier_key") from None
    if len(hex_id) != 8 or not all(c in "0123456789abcdefABCDEF" for c in hex_id):
        raise MalformedPayload("verifier key ID must be 8 hex digits", reason="invalid_verifier_key")
    if not is_valid_key_name(name) or not raw:
        raise MalformedPayload("invalid verifier key", reason="invalid_verifier_key")
    if key_id(name, raw) != kid:
        raise MalformedPayload("verifier key ID does not match name and key", reason="verifier_key_id_mismatch")
    alg, pub = raw[0], raw[1:]
    verifier: NoteVerifier
    if alg == ED25519_SIGNATURE_TYPE and len(pub) == ED25519_PUBLIC_KEY_SIZE:
        verifier = Ed25519NoteVerifier(name, pub)
    elif alg == COSIGNATURE_TYPE and len(pub) == ED25519_PUBLIC_KEY_SIZE:
        verifier = CosignatureVerifier(name, pub)
    elif alg == MLDSA65_SIGNATURE_TYPE and len(pub) == MLDSA65_PUBLIC_KEY_SIZE:
        verifier = Mldsa65NoteVerifier(name, pub)
    elif alg in (ED25519_SIGNATURE_TYPE, COSIGNATURE_TYPE, MLDSA65_SIGNATURE_TYPE):
        raise MalformedPayload("verifier public key has the wrong length", reason="invalid_verifier_key")
    else:
        raise MalformedPayload(f"unknown signature type 0x{alg:02x}", reason="unknown_key_type")
    return verifier


@dataclass(frozen=True, slots=True)
class Note:
    """An opened note: its ``text`` (ending in a newline) and the signatures found, split into those
    a known key verified and those from unknown keys (ignored, but reported)."""

    text: bytes
    verified: list[NoteSignature] = field(default_factory=list)
    unverified: list[NoteSignature] = field(default_factory=list)

    def verified_names(self) -> list[str]:
        """Names of the verified signatures, in note order."""
        return [s.name for s in self.verified]


class UnverifiedNoteError(LedgerIntegrityError):
    """A well-formed note none of whose signatures is from a known key (``reason``
    ``no_verifiable_signatures``); ``note`` lists the unverified signatures."""

    def __init__(self, note: Note) -> None:
        super().__init__("note has no verifiable signatures", reason="no_verifiable_signatures")
        self.note = note


def _check_text(data: bytes) -> None:
    """Valid UTF-8 with no ASCII control character other than newline."""
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed() from None
    if any(c < " " and c != "\n" for c in decoded):
        raise _malformed()


def parse_note(msg: bytes) -> tuple[bytes, list[NoteSignature]]:
    """Split a note into its text and signature lines, without verifying anything.

    Raises
    ------
    LedgerIntegrityError
        ``malformed_note`` (bad UTF-8, control characters, no blank line before the signatures, a
        line that is not a signature, bad base64, an invalid name, or more than 100 signatures).
    """
    msg = bytes(msg)
    _check_text(msg)
    split = msg.rfind(_SIG_SPLIT)
    if split < 0:
        raise _malformed()
    text, block = msg[: split + 1], msg[split + 2 :]
    if not block or not block.endswith(b"\n"):
        raise _malformed()
    sigs: list[NoteSignature] = []
    for line in block[:-1].split(b"\n"):
        if not line.startswith(_SIG_PREFIX):
            raise _malformed()
        name, _, b64 = line[len(_SIG_PREFIX) :].decode().partition(" ")
        try:
            payload = _b64decode(b64)
        except ValueError:
            raise _malformed() from None
        if not is_valid_key_name(name) or not b64 or len(payload) < 5:
            raise _malformed()
        if len(sigs) >= MAX_SIGNATURES:
            raise _malformed("note has too many signatures")
        sigs.append(NoteSignature(name, int.from_bytes(payload[:4], "big"), payload[4:]))
    return text, sigs


def open_note(msg: bytes, verifiers: Iterable[NoteVerifier]) -> Note:
    """Parse a note and verify its signatures from known keys (sumdb ``note.Open``).

    Raises
    ------
    LedgerIntegrityError
        ``malformed_note``; ``invalid_signature`` when a known key's signature fails;
        :class:`UnverifiedNoteError` (``no_verifiable_signatures``) when no known key signed.
    """
    text, sigs = parse_note(msg)
    known = {(v.name, v.key_id): v for v in verifiers}
    verified: list[NoteSignature] = []
    unverified: list[NoteSignature] = []
    seen: set[tuple[str, int]] = set()
    seen_unverified: set[NoteSignature] = set()
    for sig in sigs:
        ident = (sig.name, sig.key_id)
        verifier = known.get(ident)
        if verifier is None:
            if sig not in seen_unverified:
                seen_unverified.add(sig)
                unverified.append(sig)
            continue
        if ident in seen:
            continue
        seen.add(ident)
        verifier.verify(text, sig.signature)
        verified.append(sig)
    note = Note(text, verified, unverified)
    if not verified:
        raise UnverifiedNoteError(note)
    return note


def assemble_note(text: bytes, signatures: Sequence[NoteSignature]) -> bytes:
    """``text || "\\n" || signature lines``; ``text`` must be valid note text ending in a newline."""
    text = bytes(text)
    _check_text(text)
    if not text.endswith(b"\n") or not signatures:
        raise _malformed("note text must end in a newline and have at least one signature")
    return text + b"\n" + b"".join(s.line() for s in signatures)


def sign_note(text: bytes, signers: Sequence[NoteSigner]) -> bytes:
    """Sign ``text`` with every signer and return the note."""
    _check_text(bytes(text))
    sigs: list[NoteSignature] = []
    for signer in signers:
        sigs.extend(signer.sign_note(bytes(text)))
    return assemble_note(text, sigs)


class Ed25519NoteSigner:
    """A local type-0x01 note signer (tests and tooling; the enclave holds the production key).

    Parameters
    ----------
    name:
        Key name.
    seed:
        32-byte Ed25519 private seed.
    token:
        ``secret_access.TOKEN``: this handles private key bytes.
    """

    def __init__(self, name: str, seed: bytes, token: SecretKeyAccess) -> None:
        require_token(token)
        if not is_valid_key_name(name):
            raise MalformedPayload(f"invalid key name {name!r}", reason="invalid_signer_key")
        self._name = name
        self._key = Ed25519Signer(seed, token)
        self._verifier = Ed25519NoteVerifier(name, self._key.public_bytes())

    @classmethod
    def from_private_key(cls, skey: str, token: SecretKeyAccess) -> Ed25519NoteSigner:
        """Parse sumdb's ``PRIVATE+KEY+<name>+<hex key ID>+base64(0x01 || seed)``."""
        parts = skey.split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise MalformedPayload("invalid signer key", reason="invalid_signer_key")
        try:
            raw = _b64decode(parts[4])
        except ValueError:
            raise MalformedPayload("invalid signer key", reason="invalid_signer_key") from None
        if len(raw) != 33 or raw[0] != ED25519_SIGNATURE_TYPE:
            raise MalformedPayload("invalid signer key", reason="invalid_signer_key")
        signer = cls(parts[2], raw[1:], token)
        if f"{signer.key_id:08x}" != parts[3].lower():
            raise MalformedPayload("signer key ID does not match", reason="verifier_key_id_mismatch")
        return signer

    @property
    def name(self) -> str:
        return self._name

    @property
    def key_id(self) -> int:
        return self._verifier.key_id

    def verifier(self) -> Ed25519NoteVerifier:
        """The matching verifier."""
        return self._verifier

    def sign_note(self, text: bytes) -> list[NoteSignature]:
        return [NoteSignature(self._name, self._verifier.key_id, self._key.sign(text))]


@dataclass(frozen=True, slots=True)
class HybridLogKey:
    """The public half of a QFLARE log key: an Ed25519 and an ML-DSA-65 note verifier under one name.

    A QFLARE checkpoint is valid only if both lines verify (:meth:`open`). A standard signed-note
    client that only knows :attr:`ed25519` accepts the same note, ignoring the ML-DSA-65 line.
    """

    ed25519: Ed25519NoteVerifier
    mldsa65: Mldsa65NoteVerifier

    @classmethod
    def from_verify_key(cls, name: str, key: VerifyKey) -> HybridLogKey:
        """Split the enclave's composite public key (``mldsaPK || edPK``) into the two note keys."""
        raw = key.to_bytes()
        return cls(
            Ed25519NoteVerifier(name, raw[MLDSA65_PUBLIC_KEY_SIZE:]),
            Mldsa65NoteVerifier(name, raw[:MLDSA65_PUBLIC_KEY_SIZE]),
        )

    @classmethod
    def from_verifier_keys(cls, ed25519_vkey: str, mldsa65_vkey: str) -> HybridLogKey:
        """Parse the two published verifier key strings."""
        ed, ml = parse_verifier_key(ed25519_vkey), parse_verifier_key(mldsa65_vkey)
        if not isinstance(ed, Ed25519NoteVerifier) or not isinstance(ml, Mldsa65NoteVerifier) or ed.name != ml.name:
            raise MalformedPayload("need an Ed25519 and an ML-DSA-65 key of one name", reason="invalid_verifier_key")
        return cls(ed, ml)

    @property
    def name(self) -> str:
        return self.ed25519.name

    def verifier_keys(self) -> tuple[str, str]:
        """``(ed25519 vkey, ml-dsa-65 vkey)`` strings."""
        return self.ed25519.verifier_key(), self.mldsa65.verifier_key()

    def verifiers(self) -> list[NoteVerifier]:
        """Both verifiers."""
        return [self.ed25519, self.mldsa65]

    def verify_key(self) -> VerifyKey:
        """The composite ML-DSA-65 + Ed25519 public key (``mldsaPK || edPK``) the two halves come from:
        what checks the log's signed entries (:func:`qflare.ledger.entries.verify_entry`)."""
        return VerifyKey.from_bytes(self.mldsa65.public_bytes() + self.ed25519.public_bytes())

    def open(self, msg: bytes, extra: Iterable[NoteVerifier] = ()) -> Note:
        """Open a note and require both halves.

        Raises
        ------
        LedgerIntegrityError
            As :func:`open_note`, plus ``missing_signature_half`` if either line is absent.
        """
        note = open_note(msg, [*self.verifiers(), *extra])
        got = {(s.name, s.key_id) for s in note.verified}
        for v in self.verifiers():
            if (v.name, v.key_id) not in got:
                raise LedgerIntegrityError(
                    f"checkpoint lacks the {type(v).__name__} signature line", reason="missing_signature_half"
                )
        return note


class HybridNoteSigner:
    """A local QFLARE hybrid note signer from a composite ML-DSA-65 + Ed25519 key.

    Produces two lines under one name: the Ed25519 line over the text (type 0x01) and the ML-DSA-65
    line over ``MLDSA65_NOTE_DOMAIN || text`` (type 0xff, FIPS 204 context ``MLDSA65_NOTE_CONTEXT``).

    Parameters
    ----------
    name:
        Key name (usually the log origin).
    key:
        The composite signing key (its seed is ``mldsaSeed || edSeed``).
    token:
        ``secret_access.TOKEN``: the component seeds are read out of ``key``.
    """

    def __init__(self, name: str, key: SigningKey, token: SecretKeyAccess) -> None:
        seed = key.private_bytes(token)
        self._ed = Ed25519NoteSigner(name, seed[32:], token)
        self._ml = Mldsa65Signer(seed[:32], token)
        self._public = HybridLogKey(self._ed.verifier(), Mldsa65NoteVerifier(name, self._ml.public_bytes()))

    def log_key(self) -> HybridLogKey:
        """The matching public verifiers."""
        return self._public

    def sign_note(self, text: bytes) -> list[NoteSignature]:
        ml_sig = self._ml.sign(MLDSA65_NOTE_DOMAIN + text, MLDSA65_NOTE_CONTEXT)
        return [
            *self._ed.sign_note(text),
            NoteSignature(self._public.name, self._public.mldsa65.key_id, ml_sig),
        ]
