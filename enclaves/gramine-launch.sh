#!/usr/bin/env bash
# Render and sign the QFLARE enclave for Gramine-SGX, then check it starts (docs/enclave.md).
#
#   enclaves/gramine-launch.sh WORK_DIR [ENCLAVE_SIGNING_KEY.pem]
#
# Needs an SGX machine with Gramine (gramine-manifest, gramine-sgx-sign, gramine-sgx) and a working
# DCAP quote provider (aesmd + the platform's PCCS). The server then runs the enclave through
# qflare.enclave.launcher.GramineLauncher, which creates the shared region and owns the pipes:
#
#   EnclaveAggregator.launch(WORK_DIR, backend="gramine", config=...)
set -euo pipefail

WORK="${1:?usage: enclaves/gramine-launch.sh WORK_DIR [ENCLAVE_SIGNING_KEY.pem]}"
KEY="${2:-}"
PYTHON="${PYTHON:-python3}"

command -v is-sgx-available >/dev/null && is-sgx-available >/dev/null || {
    echo "error: this machine cannot run SGX enclaves (is-sgx-available failed or is missing)" >&2
    exit 2
}

"$PYTHON" -c 'from qflare.cli.enclave import app; app()' gramine-manifest --work-dir "$WORK"
SIGN=(gramine-sgx-sign --manifest "$WORK/qflare-enclave.manifest" --output "$WORK/qflare-enclave.manifest.sgx")
[[ -n "$KEY" ]] && SIGN+=(--key "$KEY")
"${SIGN[@]}"
gramine-sgx-sigstruct-view "$WORK/qflare-enclave.sig"   # MRENCLAVE / MRSIGNER to pin on edge nodes

"$PYTHON" - "$WORK" <<'PY'
import sys
from qflare.enclave.client import Enclave
from qflare.enclave.config import load_config
from qflare.enclave.launcher import GramineLauncher

work = sys.argv[1]
with Enclave(GramineLauncher(work, config=load_config(f"{work}/enclave_config.json"))) as enclave:
    identity = enclave.identity()
    print(f"enclave up: platform={identity.platform} MRENCLAVE={identity.measurement.hex()} "
          f"MRSIGNER={identity.signer.hex()} svn={identity.isv_svn} debug={identity.debug}")
PY
