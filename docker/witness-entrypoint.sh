#!/bin/sh
# The witness: its key on first start in the shared volume (the verifier key beside it, for provisioning),
# then it polls the server's ledger, checks each checkpoint extends the one it cosigned, and cosigns it.
set -eu
dir=/state/witness
mkdir -p "$dir"
if [ ! -f "$dir/witness.vkey" ]; then
  rm -f "$dir/witness.key"
  qflare witness keygen --key "$dir/witness.key" --name "${WITNESS_NAME:-witness.qflare-compose}" >"$dir/witness.vkey.tmp"
  mv "$dir/witness.vkey.tmp" "$dir/witness.vkey"
fi
logkey=/state/server-keys/ledger-log.pub   # written by the server at every start (the enclave's signing key)
i=0
until [ -f "$logkey" ]; do
  i=$((i + 1)); [ $i -le 300 ] || { echo "no $logkey after 300 s" >&2; exit 1; }
  sleep 1
done
exec qflare witness run --key "$dir/witness.key" --log "${LOG_URL:-http://server:8000}" --log-key "$logkey" \
  --state "$dir/state.json" --interval "${WITNESS_INTERVAL:-1}" "$@"
