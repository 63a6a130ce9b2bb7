#!/bin/sh
# One-shot: once the server is up, enroll the edge nodes (hybrid keys: ML-KEM/X-Wing + the KME pair's QKD
# key, each with its SAE certificate) and write their device_config.yaml folders; each device audits the
# server's ledger and requires the witness's cosignature on every checkpoint.
set -eu
[ -d /state/devices/edge_3 ] && exit 0
i=0
until [ -s /state/witness/witness.vkey ] && [ -f /state/server-keys/ledger-log.pub ]; do
  i=$((i + 1)); [ $i -le 300 ] || { echo "no witness key or ledger key after 300 s" >&2; exit 1; }
  sleep 1
done
exec qflare device provision edge_1 edge_2 edge_3 --out-dir /state/devices --trust-file /state/device_trust.yaml \
  --server http://server:8000 --wait 300 --key-source hybrid --kme-url https://kme:8443 --kme-pki /state/kme-pki \
  --qkd-peer-sae server --ledger-key /state/server-keys/ledger-log.pub \
  --witness-key "$(cat /state/witness/witness.vkey)" --require-witnesses 1
