"""QFLARE's cryptographic recipes layer.

Only the private ``_*.py`` modules of this package import ``cryptography.hazmat``; everything else
in QFLARE uses the public modules:

- :mod:`qflare.crypto.tls` - private CA, server and mTLS client certificates.
"""
