#!/usr/bin/env bash
# Compose v2 for `make compose-test-v2`: the `docker compose` CLI plugin from Debian 13 (trixie)'s
# docker-compose package (2.26), which needs only libc6 >= 2.34, so it runs on this bookworm machine.
# Bookworm ships Compose 1.29 only. Nothing is trusted on the way: trixie's InRelease is checked with
# gpgv against Debian's archive keyring, Packages.xz against the SHA-256 that InRelease signs, and the
# .deb against the SHA-256 that Packages.xz lists. Only the plugin binary is kept, in DIR/cli-plugins
# (use it with DOCKER_CONFIG=DIR); nothing is installed system-wide.
#
# usage: docker/install-compose-v2.sh DIR
set -euo pipefail
DEST=${1:?usage: install-compose-v2.sh DIR}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=${COMPOSE_V2_SUITE:-trixie}
KEYRING=${DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}
ARCH=$(dpkg --print-architecture)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
say() { printf 'install-compose-v2: %s\n' "$*" >&2; }
sha256_in() {   # the SHA-256 that the "SHA256:" section of Release file $1 lists for path $2
  awk -v f="$2" '/^SHA256:/{s=1; next} /^[^ ]/{s=0} s && $3 == f {print $1}' "$1"
}

curl -fsS "$MIRROR/dists/$SUITE/InRelease" -o "$tmp/InRelease"
gpgv --keyring "$KEYRING" --output "$tmp/Release" "$tmp/InRelease" 2>"$tmp/gpgv.log" \
  || { cat "$tmp/gpgv.log" >&2; say "$SUITE's InRelease does not verify against $KEYRING"; exit 1; }
index=main/binary-$ARCH/Packages.xz
want=$(sha256_in "$tmp/Release" "$index")
[ -n "$want" ] || { say "$index is not listed in $SUITE's Release"; exit 1; }
curl -fsS "$MIRROR/dists/$SUITE/$index" -o "$tmp/Packages.xz"
echo "$want  $tmp/Packages.xz" | sha256sum -c --quiet - || { say "$index: SHA-256 mismatch"; exit 1; }
xz -dc "$tmp/Packages.xz" >"$tmp/Packages"
stanza=$(awk '/^Package: docker-compose$/{p=1} p && /^$/{exit} p' "$tmp/Packages")
file=$(sed -n 's/^Filename: //p' <<<"$stanza")
sum=$(sed -n 's/^SHA256: //p' <<<"$stanza")
version=$(sed -n 's/^Version: //p' <<<"$stanza")
[ -n "$file" ] && [ -n "$sum" ] || { say "no docker-compose package in $SUITE ($ARCH)"; exit 1; }
curl -fsS "$MIRROR/$file" -o "$tmp/compose.deb"
echo "$sum  $tmp/compose.deb" | sha256sum -c --quiet - || { say "$file: SHA-256 mismatch"; exit 1; }
dpkg-deb -x "$tmp/compose.deb" "$tmp/root"
mkdir -p "$DEST/cli-plugins"
install -m 0755 "$tmp/root/usr/libexec/docker/cli-plugins/docker-compose" "$DEST/cli-plugins/docker-compose"
say "docker-compose $version ($SUITE, $ARCH, signature and checksums verified) in $DEST/cli-plugins"
