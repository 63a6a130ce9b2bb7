"""What a device configuration needs in order to trust this server, printed by ``qflare server``.

With the enclave on, a device's trust comes from the attested quote: it pins the enclave's measurement
and signer (and, for the simulated platform, its attestation root); the quote binds the enclave's KEM and
signing keys, so no server key is pinned. Without an enclave the device pins the server KEM key's
fingerprint (``GET /v1/server/keys`` serves the key).
"""

from __future__ import annotations

from pathlib import Path

from qflare.crypto.keyfile import fingerprint
from qflare.server.state import ServerState

__all__ = ["device_config_snippet"]


def device_config_snippet(state: ServerState, *, server_url: str, ca_file: str | None) -> str:
    """The ``device_config.yaml`` lines a device needs for this server (YAML)."""
    lines = [f"server_url: {server_url}"]
    if ca_file:
        lines.append(f"ca_file: {ca_file}")
    if state.enclave is None:
        lines += ["server_public_key_file: null",
                  f'server_key_fingerprint: "{fingerprint(state.gateway.opener.kem_public_key())}"',
                  "attestation: null"]
        return "\n".join(lines)
    from qflare.enclave.trusted.platform import TRUST_ROOT_FILE

    ident = state.enclave.identity()
    lines += ["server_public_key_file: null       # the attested quote binds the enclave's keys",
              "server_key_fingerprint: null",
              "attestation:",
              f"  expected_measurement: {ident.measurement.hex()}",
              f"  expected_signer: {ident.signer.hex()}"]
    if ident.simulated:
        root = (Path(state.config.enclave.work_dir) / "platform" / TRUST_ROOT_FILE).resolve()
        lines += [f"  trust_root_file: {root}", "  allow_simulated: true        # a simulated enclave: demos only"]
    return "\n".join(lines)
