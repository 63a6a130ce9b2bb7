"""Simulated quantum key distribution: BB84, a simulated ETSI GS QKD 014 KME pair, key sources.

The pure parts (:mod:`channel`, :mod:`cascade`, :mod:`toeplitz`, :mod:`keyrate`, :mod:`bb84`,
:mod:`kme`, :mod:`keysource`) yield bytes; only :mod:`qflare.qkd.etsi014` speaks HTTP.
"""

from qflare.qkd.bb84 import BB84Result, run_bb84
from qflare.qkd.channel import Channel
from qflare.qkd.etsi014 import KMEClient, KMEEnd, KMEListener, KMEPairServer, KMEStatus
from qflare.qkd.keyrate import asymptotic_key_rate, binary_entropy, plob_bound, secret_key_length
from qflare.qkd.keysource import KeySource, KeySourceMode, MLKEMOnly, QKDKeySource, make_key_source
from qflare.qkd.kme import BB84Link, KeyStore, KeyStoreLimits, QKDKey
from qflare.qkd.pki import DemoPKI, create_demo_pki

__all__ = [
    "BB84Link",
    "BB84Result",
    "Channel",
    "DemoPKI",
    "KMEClient",
    "KMEEnd",
    "KMEListener",
    "KMEPairServer",
    "KMEStatus",
    "KeySource",
    "KeySourceMode",
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
