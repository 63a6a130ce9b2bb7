#!/bin/sh
# The KME pair: its TLS material is created on first start in the shared volume (a demo CA).
set -eu
pki=/state/kme-pki
[ -f "$pki/tls/server.pem" ] || qflare init --dir "$pki" --hostname kme >/dev/null
exec qflare kme serve --cert "$pki/tls/server.pem" --key "$pki/tls/server.key" --ca "$pki/tls/ca.pem" \
  --host 0.0.0.0 --port 8443 --port-b 8444 "$@"
