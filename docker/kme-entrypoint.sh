#!/bin/sh
# The KME pair: a demo PKI on first start in the shared volume (a CA, the KMEs' certificates for the host
# name `kme`, one SAE client certificate per edge node and the server), then both KMEs.
# SAE_A: the SAEs at KME A (edge nodes, master SAEs); SAE_B: at KME B (the server, the slave SAE).
set -eu
: "${SAE_A:?set SAE_A}" "${SAE_B:?set SAE_B}"
pki=/state/kme-pki
sae_args="" serve_args=""
for s in $SAE_A; do sae_args="$sae_args --sae $s"; serve_args="$serve_args --sae-a $s"; done
for s in $SAE_B; do sae_args="$sae_args --sae $s"; serve_args="$serve_args --sae-b $s"; done
if [ ! -f "$pki/done" ]; then
  # shellcheck disable=SC2086  # word splitting of the option lists is intended
  qflare qkd kme pki "$pki.tmp" $sae_args --dns-name kme >/dev/null
  rm -rf "$pki" && mv "$pki.tmp" "$pki" && touch "$pki/done"
fi
# shellcheck disable=SC2086
exec qflare kme serve --cert "$pki/kme-a.pem" --key "$pki/kme-a.key" --cert-b "$pki/kme-b.pem" \
  --key-b "$pki/kme-b.key" --ca "$pki/ca.pem" --host 0.0.0.0 --port 8443 --port-b 8444 $serve_args "$@"
