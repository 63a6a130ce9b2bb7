"""CKKS aggregation: the encrypted sum equals FedAvg, other contexts are refused, no secret key on the server."""

from __future__ import annotations

import numpy as np
import pytest

from qflare.errors import AggregationError, ConfigError
from qflare.fl.aggregate import fedavg
from qflare.fl.he import HESumAccumulator, decrypt_aggregate, encrypt_update, make_context, public_context
from qflare.fl.spec import ModelSpec

RNG = np.random.default_rng(0)
UPDATES = [({"w": RNG.normal(size=(70, 80)).astype(np.float32), "b": RNG.normal(size=5).astype(np.float32)}, n)
           for n in (10, 30, 7)]
SPEC = ModelSpec.from_arrays(UPDATES[0][0])


@pytest.fixture(scope="module")
def ctx():  # type: ignore[no-untyped-def]
    return make_context()


def test_encrypted_sum_decrypts_to_fedavg(ctx) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    server = HESumAccumulator(public_context(ctx), SPEC)
    # Execute
    for arrays, n in UPDATES:
        server.add(encrypt_update(ctx, arrays, n, SPEC), n)
    out = decrypt_aggregate(ctx, server.result(), SPEC)
    # Assert
    expected = fedavg(UPDATES)
    for name in expected:
        np.testing.assert_allclose(out[name], expected[name], atol=1e-4)


def test_ciphertext_from_another_context_is_refused(ctx) -> None:  # type: ignore[no-untyped-def]
    other = make_context()
    server = HESumAccumulator(public_context(ctx), SPEC)
    with pytest.raises(AggregationError) as err:
        server.add(encrypt_update(other, UPDATES[0][0], 10, SPEC), 10)
    assert err.value.reason == "he_context_mismatch"
    assert "another context" in err.value.message
    with pytest.raises(AggregationError) as err:
        server.add(b"not ckks", 10)
    assert err.value.reason == "he_malformed"
    with pytest.raises(AggregationError) as err:
        server.add(encrypt_update(ctx, UPDATES[0][0], 10, SPEC), 99)
    assert err.value.reason == "he_count_mismatch"


def test_server_never_holds_the_secret_key(ctx) -> None:  # type: ignore[no-untyped-def]
    # Prepare: the device context's secret key bytes, to look for
    secret = bytes(ctx.serialize(save_secret_key=True))
    public = public_context(ctx)
    # Assert: the server context holds no secret key, and a context with one is refused
    server = HESumAccumulator(public, SPEC)
    assert not server._ctx.has_secret_key()
    assert not server._ctx.is_private()
    with pytest.raises(Exception):  # noqa: B017 - TenSEAL: no secret key to decrypt with
        server._ctx.secret_key()
    with pytest.raises(ConfigError) as err:
        HESumAccumulator(secret, SPEC)
    assert err.value.reason == "he_secret_key_on_server"
