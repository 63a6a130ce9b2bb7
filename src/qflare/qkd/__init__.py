"""Simulated quantum key distribution: BB84 (single photons, weak coherent pulses, decoy states), key sources.

Pure domain code: it yields bytes and never imports a web server or a database. The ETSI GS QKD 014
wire models (:mod:`qflare.qkd.wire`), the key store (:mod:`qflare.qkd.keystore`) and the SAE client
(:mod:`qflare.qkd.client`, the only module here that imports httpx) live here; the KME HTTP service
is :mod:`qflare.kme`. The optional Qiskit backend is :mod:`qflare.qkd.circuit` (``pip install
qflare[qiskit]``; imported lazily).
"""

from qflare.qkd.bb84 import BB84Result, run_bb84
from qflare.qkd.channel import Channel
from qflare.qkd.client import KMEClient
from qflare.qkd.keyrate import asymptotic_key_rate, binary_entropy, plob_bound, secret_key_length
from qflare.qkd.keysource import KeyProvider, MLKEMOnly, QKDKeySource, make_key_source
from qflare.qkd.keystore import BB84Link, KeyStore, KeyStoreLimits, QKDKey
from qflare.qkd.pki import DemoPKI, create_demo_pki
from qflare.qkd.wire import KMEStatus

__all__ = [
    "BB84Link",
    "BB84Result",
    "Channel",
    "DemoPKI",
    "KMEClient",
    "KMEStatus",
    "KeyProvider",
    "KeyStore",
    "KeyStoreLimits",
    "MLKEMOnly",
    "QKDKey",
    "QKDKeySource",
    "asymptotic_key_rate",
    "binary_entropy",
    "create_demo_pki",
    "make_key_source",
    "plob_bound",
    "run_bb84",
    "secret_key_length",
]
