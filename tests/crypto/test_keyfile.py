"""Key files: encrypted and clear private keys, public keys, fingerprints, tampering."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qflare.crypto import secret_access
from qflare.crypto.kem import XWingPrivateKey
from qflare.crypto.keyfile import (
    UnencryptedKeyWarning,
    fingerprint,
    parse_private_key,
    parse_public_key,
    read_private_key,
    read_public_key,
    serialize_private_key,
    serialize_public_key,
    write_private_key,
    write_public_key,
)
from qflare.crypto.signing import SigningKey
from qflare.errors import CryptoError, DecryptionFailed, MalformedPayload, QFlareError

TOKEN = secret_access.TOKEN
FAST = 2**14  # smallest accepted scrypt cost, to keep the tests quick


@pytest.mark.parametrize("make", [SigningKey.generate, XWingPrivateKey.generate])
def test_encrypted_round_trip(tmp_path: Path, make: object) -> None:
    key = make()  # type: ignore[operator]
    path = write_private_key(tmp_path / "k.json", key, token=TOKEN, passphrase="correct horse", scrypt_n=FAST)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    obj = json.loads(path.read_text())
    assert obj["protection"]["kdf"] == "scrypt" and obj["protection"]["n"] == FAST
    assert key.private_bytes(TOKEN).hex() not in path.read_text()
    loaded = read_private_key(path, token=TOKEN, passphrase="correct horse")
    assert loaded.public_key() == key.public_key()
    assert type(loaded) is type(key)
    with pytest.raises(DecryptionFailed) as info:
        read_private_key(path, token=TOKEN, passphrase="wrong")
    assert info.value.reason == "wrong_passphrase"
    with pytest.raises(CryptoError) as info2:
        read_private_key(path, token=TOKEN, passphrase=None)
    assert info2.value.reason == "passphrase_required"


def test_clear_key_warns_and_is_0600(tmp_path: Path) -> None:
    key = SigningKey.generate()
    old = os.umask(0)
    try:
        with pytest.warns(UnencryptedKeyWarning):
            path = write_private_key(tmp_path / "device.key", key, token=TOKEN, passphrase=None)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_private_key(path, token=TOKEN, passphrase=None).public_key() == key.public_key()
    with pytest.raises(CryptoError):
        read_private_key(path, token=TOKEN, passphrase="unexpected")


def test_public_key_files(tmp_path: Path) -> None:
    for key in (SigningKey.generate(), XWingPrivateKey.generate()):
        path = write_public_key(tmp_path / "pub.json", key.public_key())
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert read_public_key(path) == key.public_key()
        obj = json.loads(path.read_text())
        assert obj["fingerprint"] == fingerprint(key.public_key())
        with pytest.raises(MalformedPayload):  # a public file is not a private key
            parse_private_key(path.read_bytes(), token=TOKEN, passphrase=None)


def test_fingerprint_format() -> None:
    fp = fingerprint(SigningKey.generate().public_key())
    groups = fp.split(":")
    assert len(groups) == 8 and all(len(g) == 4 for g in groups)
    int(fp.replace(":", ""), 16)


def test_tampering_is_detected() -> None:
    key = SigningKey.generate()
    data = serialize_private_key(key, token=TOKEN, passphrase=b"pw", scrypt_n=FAST)
    obj = json.loads(data)
    other = SigningKey.generate()
    swapped = dict(obj, public_key=json.loads(serialize_public_key(other.public_key()))["public_key"])
    with pytest.raises(MalformedPayload):  # fingerprint no longer matches
        parse_private_key(json.dumps(swapped).encode(), token=TOKEN, passphrase=b"pw")
    swapped["fingerprint"] = fingerprint(other.public_key())
    with pytest.raises(DecryptionFailed):  # public key is bound into the AEAD associated data
        parse_private_key(json.dumps(swapped).encode(), token=TOKEN, passphrase=b"pw")
    weaker = json.loads(data)
    weaker["protection"]["n"] = 2**15
    with pytest.raises(DecryptionFailed):
        parse_private_key(json.dumps(weaker).encode(), token=TOKEN, passphrase=b"pw")
    too_weak = json.loads(data)
    too_weak["protection"]["n"] = 2**10
    with pytest.raises(MalformedPayload):
        parse_private_key(json.dumps(too_weak).encode(), token=TOKEN, passphrase=b"pw")
    clear = json.loads(serialize_private_key(key, token=TOKEN, passphrase=None))
    clear["private_key"] = json.loads(serialize_private_key(other, token=TOKEN, passphrase=None))["private_key"]
    with pytest.raises(CryptoError) as info:
        parse_private_key(json.dumps(clear).encode(), token=TOKEN, passphrase=None)
    assert info.value.reason == "key_mismatch"
    newer = dict(json.loads(data), version=2)
    with pytest.raises(MalformedPayload) as info2:
        parse_private_key(json.dumps(newer).encode(), token=TOKEN, passphrase=b"pw")
    assert info2.value.reason == "unsupported_version"


def test_token_is_required() -> None:
    key = SigningKey.generate()
    with pytest.raises(TypeError):
        serialize_private_key(key, token=None, passphrase=None)  # type: ignore[arg-type]
    data = serialize_private_key(key, token=TOKEN, passphrase=None)
    with pytest.raises(TypeError):
        parse_private_key(data, token="TOKEN", passphrase=None)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=500) | st.text(max_size=300).map(str.encode))
def test_random_input_only_raises_qflare_errors(data: bytes) -> None:
    for parse in (
        lambda d: parse_public_key(d),
        lambda d: parse_private_key(d, token=TOKEN, passphrase=None),
    ):
        with pytest.raises(QFlareError):
            parse(data)
