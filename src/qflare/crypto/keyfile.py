"""One key file format for device identity keys and server keys (JSON, version 1).

A file holds one key: a composite signing key (``id-MLDSA65-Ed25519-SHA512``) or an X-Wing KEM key
(``X-Wing``). Private key files store the key's seed, encrypted with a passphrase (scrypt +
AES-256-GCM, parameters recorded in the file) or, without a passphrase, in clear in a mode-0600 file
with an :class:`UnencryptedKeyWarning`. Reading or writing private keys needs
``secret_access.TOKEN``.

Private key file::

    {"format": "qflare-key", "version": 1, "type": "private",
     "alg": "id-MLDSA65-Ed25519-SHA512" | "X-Wing",
     "public_key": "<base64>", "fingerprint": "xxxx:xxxx:xxxx:xxxx:xxxx:xxxx:xxxx:xxxx",
     "protection": {"kdf": "scrypt", "n": 65536, "r": 8, "p": 1, "salt": "<base64, 16 bytes>",
                    "aead": "AES-256-GCM"} | null,
     "private_key": "<base64: seed, or nonce || AES-256-GCM(seed) || tag>"}

The AEAD key is ``scrypt(passphrase, salt, n, r, p, 32)``; the associated data is
``b"qflare-key-v1\\x00"`` followed by the canonical JSON (sorted keys, no spaces) of every field
except ``private_key``, so no field can be swapped or edited. Public key files carry the same
fields up to ``fingerprint`` with ``"type": "public"``.

The fingerprint is the first 16 bytes of SHA-256 of the raw public key, as 8 colon-separated groups
of 4 hex digits.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import unicodedata
import warnings
from pathlib import Path
from typing import Any, Final

from qflare.crypto import _composite, _xwing
from qflare.crypto._aead import Aead
from qflare.crypto._files import write_file_atomic
from qflare.crypto._kdf import scrypt
from qflare.crypto._random import random_bytes
from qflare.crypto.secret_access import SecretKeyAccess, require_token
from qflare.errors import CryptoError, DecryptionFailed, MalformedPayload

__all__ = [
    "DEFAULT_SCRYPT_N",
    "PrivateKey",
    "PublicKey",
    "UnencryptedKeyWarning",
    "fingerprint",
    "parse_private_key",
    "parse_public_key",
    "read_private_key",
    "read_public_key",
    "serialize_private_key",
    "serialize_public_key",
    "write_private_key",
    "write_public_key",
]

PrivateKey = _composite.SigningKey | _xwing.XWingPrivateKey
PublicKey = _composite.VerifyKey | _xwing.XWingPublicKey

FORMAT: Final = "qflare-key"
VERSION: Final = 1
DEFAULT_SCRYPT_N: Final = 2**16
_SCRYPT_R: Final = 8
_SCRYPT_P: Final = 1
_MIN_N: Final = 2**14
_MAX_N: Final = 2**20
_SALT_SIZE: Final = 16
_MAX_FILE: Final = 65536
_AAD_PREFIX: Final = b"qflare-key-v1\x00"
_ALG_SIGN: Final = _composite.ALGORITHM
_ALG_KEM: Final = "X-Wing"


class UnencryptedKeyWarning(UserWarning):
    """A private key was written without a passphrase (the file is mode 0600, but in clear)."""


def fingerprint(public_key: PublicKey) -> str:
    """Short human fingerprint: SHA-256 of the raw public key, first 16 bytes, ``xxxx:...`` groups."""
    digest = hashlib.sha256(_public_raw(public_key)).hexdigest()[:32]
    return ":".join(digest[i : i + 4] for i in range(0, 32, 4))


def _public_raw(public_key: PublicKey) -> bytes:
    if isinstance(public_key, _composite.VerifyKey | _xwing.XWingPublicKey):
        return public_key.to_bytes()
    raise TypeError("expected a VerifyKey or XWingPublicKey")


def _alg_of(key: PrivateKey | PublicKey) -> str:
    if isinstance(key, _composite.SigningKey | _composite.VerifyKey):
        return _ALG_SIGN
    if isinstance(key, _xwing.XWingPrivateKey | _xwing.XWingPublicKey):
        return _ALG_KEM
    raise TypeError("expected a QFLARE signing or KEM key")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise _bad(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise _bad(f"{what} is not valid base64") from None


def _bad(message: str) -> MalformedPayload:
    return MalformedPayload(message, reason="malformed_key_file")


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _passphrase_bytes(passphrase: bytes | str) -> bytes:
    if isinstance(passphrase, str):
        passphrase = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    if not isinstance(passphrase, bytes) or not passphrase:
        raise ValueError("passphrase must be non-empty bytes or str")
    return passphrase


def _public_fields(public_key: PublicKey, kind: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "type": kind,
        "alg": _alg_of(public_key),
        "public_key": _b64(_public_raw(public_key)),
        "fingerprint": fingerprint(public_key),
    }


# ----------------------------------------------------------------------------------------- public keys


def serialize_public_key(public_key: PublicKey) -> bytes:
    """Public key file bytes (JSON, UTF-8, trailing newline)."""
    return json.dumps(_public_fields(public_key, "public"), indent=2).encode("ascii") + b"\n"


def _load_json(data: bytes) -> dict[str, Any]:
    if len(data) > _MAX_FILE:
        raise _bad("key file too large")
    try:
        obj = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _bad("key file is not JSON") from None
    if not isinstance(obj, dict):
        raise _bad("key file must be a JSON object")
    if obj.get("format") != FORMAT:
        raise _bad("not a qflare key file")
    if obj.get("version") != VERSION or isinstance(obj.get("version"), bool):
        raise MalformedPayload("unsupported key file version", reason="unsupported_version")
    return obj


def _parse_public_fields(obj: dict[str, Any]) -> PublicKey:
    raw = _unb64(obj.get("public_key"), "public_key")
    alg = obj.get("alg")
    public: PublicKey
    if alg == _ALG_SIGN:
        public = _composite.VerifyKey.from_bytes(raw)
    elif alg == _ALG_KEM:
        public = _xwing.XWingPublicKey.from_bytes(raw)
    else:
        raise _bad(f"unknown algorithm {alg!r}")
    if obj.get("fingerprint") != fingerprint(public):
        raise _bad("fingerprint does not match the public key")
    return public


def parse_public_key(data: bytes) -> PublicKey:
    """Parse a public key file (a private key file is refused).

    Raises
    ------
    MalformedPayload
        ``reason="malformed_key_file"``, ``"unsupported_version"`` or ``"invalid_public_key"``.
    """
    obj = _load_json(data)
    if obj.get("type") != "public" or set(obj) != {
        "format",
        "version",
        "type",
        "alg",
        "public_key",
        "fingerprint",
    }:
        raise _bad("not a public key file")
    return _parse_public_fields(obj)


def write_public_key(path: str | os.PathLike[str], public_key: PublicKey) -> Path:
    """Write a public key file (mode 0644)."""
    return write_file_atomic(path, serialize_public_key(public_key), mode=0o644)


def read_public_key(path: str | os.PathLike[str]) -> PublicKey:
    """Read a public key file; see :func:`parse_public_key`."""
    return parse_public_key(Path(path).read_bytes())


# ---------------------------------------------------------------------------------------- private keys


def serialize_private_key(
    key: PrivateKey,
    *,
    token: SecretKeyAccess,
    passphrase: bytes | str | None,
    scrypt_n: int = DEFAULT_SCRYPT_N,
) -> bytes:
    """Private key file bytes; encrypted when ``passphrase`` is given.

    Parameters
    ----------
    key:
        A :class:`SigningKey` or :class:`XWingPrivateKey`.
    token:
        ``secret_access.TOKEN``.
    passphrase:
        ``None`` writes the seed in clear (callers should warn; :func:`write_private_key` does).
    scrypt_n:
        scrypt cost (power of two, 2**14 to 2**20); recorded in the file.
    """
    require_token(token)
    if not isinstance(key, _composite.SigningKey | _xwing.XWingPrivateKey):
        raise TypeError("expected a SigningKey or XWingPrivateKey")
    seed = key.private_bytes(token)
    obj = _public_fields(key.public_key(), "private")
    if passphrase is None:
        obj["protection"] = None
        obj["private_key"] = _b64(seed)
    else:
        if scrypt_n < _MIN_N or scrypt_n > _MAX_N or scrypt_n & (scrypt_n - 1):
            raise ValueError("scrypt_n must be a power of two between 2**14 and 2**20")
        salt = random_bytes(_SALT_SIZE)
        obj["protection"] = {
            "kdf": "scrypt",
            "n": scrypt_n,
            "r": _SCRYPT_R,
            "p": _SCRYPT_P,
            "salt": _b64(salt),
            "aead": "AES-256-GCM",
        }
        wrap_key = scrypt(_passphrase_bytes(passphrase), salt, n=scrypt_n, r=_SCRYPT_R, p=_SCRYPT_P)
        obj["private_key"] = _b64(Aead(wrap_key).encrypt(seed, _AAD_PREFIX + _canonical(obj)))
    return json.dumps(obj, indent=2).encode("ascii") + b"\n"


def parse_private_key(data: bytes, *, token: SecretKeyAccess, passphrase: bytes | str | None) -> PrivateKey:
    """Parse a private key file and check that the seed matches the recorded public key.

    Raises
    ------
    MalformedPayload
        Not a valid v1 private key file.
    CryptoError
        ``reason="passphrase_required"`` (encrypted file, no passphrase), ``"key_not_encrypted"``
        (a passphrase for a clear file), ``"key_mismatch"`` (seed and public key disagree).
    DecryptionFailed
        ``reason="wrong_passphrase"``: wrong passphrase or edited file.
    """
    require_token(token)
    obj = _load_json(data)
    expected = {"format", "version", "type", "alg", "public_key", "fingerprint", "protection", "private_key"}
    if obj.get("type") != "private" or set(obj) != expected:
        raise _bad("not a private key file")
    public = _parse_public_fields(obj)
    blob = _unb64(obj["private_key"], "private_key")
    protection = obj["protection"]
    if protection is None:
        if passphrase is not None:
            raise CryptoError("this key file is not encrypted", reason="key_not_encrypted")
        seed = blob
    else:
        if passphrase is None:
            raise CryptoError("this key file is encrypted: a passphrase is required", reason="passphrase_required")
        n, r, p, salt = _check_protection(protection)
        header = {k: v for k, v in obj.items() if k != "private_key"}
        wrap_key = scrypt(_passphrase_bytes(passphrase), salt, n=n, r=r, p=p)
        try:
            seed = Aead(wrap_key).decrypt(blob, _AAD_PREFIX + _canonical(header))
        except DecryptionFailed:
            raise DecryptionFailed("wrong passphrase or modified key file", reason="wrong_passphrase") from None
    key: PrivateKey
    try:
        if isinstance(public, _composite.VerifyKey):
            key = _composite.SigningKey.from_seed(seed, token)
        else:
            key = _xwing.XWingPrivateKey.from_seed(seed, token)
    except ValueError:
        raise _bad("private key has the wrong length") from None
    if key.public_key() != public:
        raise CryptoError("private key does not match the recorded public key", reason="key_mismatch")
    return key


def _check_protection(protection: Any) -> tuple[int, int, int, bytes]:
    if not isinstance(protection, dict) or set(protection) != {"kdf", "n", "r", "p", "salt", "aead"}:
        raise _bad("bad protection block")
    if protection["kdf"] != "scrypt" or protection["aead"] != "AES-256-GCM":
        raise _bad("unsupported key protection")
    n, r, p = protection["n"], protection["r"], protection["p"]
    for value in (n, r, p):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad("scrypt parameters must be integers")
    if not (_MIN_N <= n <= _MAX_N and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
        raise _bad("scrypt parameters out of the accepted range")
    salt = _unb64(protection["salt"], "salt")
    if not 16 <= len(salt) <= 64:
        raise _bad("bad salt length")
    return n, r, p, salt


def write_private_key(
    path: str | os.PathLike[str],
    key: PrivateKey,
    *,
    token: SecretKeyAccess,
    passphrase: bytes | str | None,
    scrypt_n: int = DEFAULT_SCRYPT_N,
) -> Path:
    """Write a private key file, mode 0600 (atomic). Warns :class:`UnencryptedKeyWarning` when
    ``passphrase`` is ``None``."""
    data = serialize_private_key(key, token=token, passphrase=passphrase, scrypt_n=scrypt_n)
    if passphrase is None:
        warnings.warn(
            f"private key written to {os.fspath(path)} without a passphrase (mode 0600, unencrypted)",
            UnencryptedKeyWarning,
            stacklevel=2,
        )
    return write_file_atomic(path, data, mode=0o600)


def read_private_key(
    path: str | os.PathLike[str], *, token: SecretKeyAccess, passphrase: bytes | str | None
) -> PrivateKey:
    """Read a private key file; see :func:`parse_private_key`."""
    return parse_private_key(Path(path).read_bytes(), token=token, passphrase=passphrase)
