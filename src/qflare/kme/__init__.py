"""The simulated ETSI GS QKD 014 KME pair as an HTTPS service (FastAPI + uvicorn, mutual TLS).

The domain parts (wire models, key store, client) live in :mod:`qflare.qkd`, which knows no web
server; this package is the HTTP service around :class:`qflare.qkd.keystore.KeyStore`:

- :mod:`qflare.kme.app`: the FastAPI app of one KME end (:func:`create_kme_app`, :class:`KMEEnd`);
- :mod:`qflare.kme.tls`: mutual TLS under uvicorn (:class:`MutualTLSProtocol`, :func:`server_ssl_context`);
- :mod:`qflare.kme.pair`: both ends in one process (:class:`KMEPairServer`, :class:`KMEListener`).
"""

from qflare.kme.app import KMEEnd, create_kme_app
from qflare.kme.pair import KMEListener, KMEPairServer
from qflare.kme.tls import MutualTLSProtocol, server_ssl_context

__all__ = ["KMEEnd", "KMEListener", "KMEPairServer", "MutualTLSProtocol", "create_kme_app", "server_ssl_context"]
