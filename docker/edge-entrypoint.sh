#!/bin/sh
# An edge node in the Compose federation: wait for its provisioned folder, then run.
set -eu
: "${DEVICE_ID:?set DEVICE_ID}"
cfg="/state/devices/$DEVICE_ID/device_config.yaml"
i=0
until [ -f "$cfg" ]; do
  i=$((i + 1)); [ $i -le 300 ] || { echo "no $cfg after 300 s" >&2; exit 1; }
  sleep 1
done
exec qflare edge --config "$cfg" "$@"
