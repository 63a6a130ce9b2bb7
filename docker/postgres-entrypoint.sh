#!/bin/sh
set -eu
PGDATA=${PGDATA:-/var/lib/postgresql/data}
BIN=/usr/lib/postgresql/15/bin
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  $BIN/initdb -D "$PGDATA" -U postgres --auth=trust >/dev/null
  echo "host all all 0.0.0.0/0 trust" >> "$PGDATA/pg_hba.conf"
  $BIN/pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  $BIN/createdb -U postgres "${POSTGRES_DB:-qflare}"
  $BIN/pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec $BIN/postgres -D "$PGDATA" -c listen_addresses='*'
