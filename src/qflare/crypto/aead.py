"""AES-256-GCM with hidden random nonces and required associated data.

>>> box = Aead(Aead.generate_key())
>>> blob = box.encrypt(b"weights", b"round=7|device=dev-1")
>>> box.decrypt(blob, b"round=7|device=dev-1")
b'weights'
"""

from qflare.crypto._aead import KEY_SIZE, OVERHEAD, Aead

__all__ = ["KEY_SIZE", "OVERHEAD", "Aead"]
