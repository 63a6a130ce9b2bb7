#!/usr/bin/env bash
# make compose-test: the Compose federation tested for real on this machine (docs/deploy.md).
#
# 1. installs Debian's docker.io, docker-compose and debootstrap if missing (apt-get); with COMPOSE_V2=1,
#    Compose v2 from Debian 13's package, verified (docker/install-compose-v2.sh), runs the same steps;
# 2. starts dockerd unless one answers, and stops it by its PID at the end;
# 3. builds a python base image from Debian packages (debootstrap + docker import): no registry is needed;
# 4. builds the three images with BuildKit, handing pip this machine's configuration (`pip config list`:
#    CA bundle, local wheels) as a build secret and a bind mount: nothing of it lands in a layer or a
#    published file;
# 5. brings the stack up, waits for round 1, kills and restarts the server container, waits for round 2,
#    tears everything down. Logs to $LOG (default runs/compose-test.log).
#    Checked on the way: every accepted update was keyed with hybrid keys (the server's events), the witness
#    cosigned checkpoints and each edge node verified a cosigned one, before and after the restart.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LOG=${LOG:-$ROOT/runs/compose-test.log}
WORK=${WORK:-/var/tmp/qflare-compose}
DOCKER=${DOCKER:-/usr/bin/docker}        # Debian's client (a newer client elsewhere in PATH needs buildx)
COMPOSE=${COMPOSE:-docker-compose}       # Compose 1.29 from Debian; `docker compose` (v2) reads the same file
COMPOSE_V2=${COMPOSE_V2:-0}              # 1: Compose v2 (docker/install-compose-v2.sh), make compose-test-v2
BASE_TAG=qflare-base:bookworm
PROJECT=qflare-ct
TIMEOUT=${TIMEOUT:-900}
mkdir -p "$(dirname "$LOG")" "$WORK"
exec > >(tee "$LOG") 2>&1
say() { printf '%s compose-test: %s\n' "$(date -u +%H:%M:%S)" "$*"; }
t0=$(date +%s)

# 1. packages
need=()
[ -x /usr/sbin/dockerd ] || need+=(docker.io)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

if [ "$COMPOSE_V2" = 1 ]; then   # the `docker compose` plugin, verified from Debian 13, in $WORK only
  export DOCKER_CONFIG=$WORK/docker-config
  [ -x "$DOCKER_CONFIG/cli-plugins/docker-compose" ] || bash "$ROOT/docker/install-compose-v2.sh" "$DOCKER_CONFIG"
  COMPOSE="$DOCKER compose"
fi

# 2. the daemon
DOCKERD_PID=""
cleanup() {
  say "tearing down"
  (cd "$ROOT" && QFLARE_IMAGE_TAG=ct $COMPOSE -p $PROJECT down -v --remove-orphans) >/dev/null 2>&1 || true
  if [ -n "$DOCKERD_PID" ]; then
    say "stopping dockerd (pid $DOCKERD_PID)"
    kill "$DOCKERD_PID" 2>/dev/null || true
    wait "$DOCKERD_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT
if ! $DOCKER info >/dev/null 2>&1; then
  say "starting dockerd"
  /usr/sbin/dockerd >"$WORK/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 60); do $DOCKER info >/dev/null 2>&1 && break; sleep 1; done
  $DOCKER info >/dev/null 2>&1 || { say "dockerd did not start"; tail -20 "$WORK/dockerd.log"; exit 1; }
fi
say "docker $($DOCKER version --format '{{.Server.Version}}'), $($COMPOSE version --short 2>/dev/null || $COMPOSE version)"

# 3. the base image from Debian's packages
if ! $DOCKER image inspect $BASE_TAG >/dev/null 2>&1; then
  say "debootstrap bookworm (python3, venv, ca-certificates)"
  rm -rf "$WORK/rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates,libgomp1 \
    bookworm "$WORK/rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
    || { tail -20 "$WORK/debootstrap.log"; exit 1; }
  rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
  tar -C "$WORK/rootfs" -c . | $DOCKER import -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' - $BASE_TAG
  rm -rf "$WORK/rootfs"
fi
say "base image $BASE_TAG: $($DOCKER image inspect $BASE_TAG --format '{{.Size}}') bytes"

# 4. build. pip's configuration of this machine, as a secret (never in a layer); local wheels bind-mounted.
PIPCONF="$WORK/pip.conf"
WHEELS="$ROOT/docker/wheels"         # ignored by git; bind-mounted at build time only
mkdir -p "$WHEELS"
pipcfg() {   # a key of `pip config list` (global, else the environment's PIP_* settings)
  python3 -m pip config list 2>/dev/null | sed -n "s/^\(global\|:env:\)\.$1='\(.*\)'\$/\2/p" | head -1
}
cert=$(pipcfg cert)
links=$(pipcfg find-links)
{
  echo "[global]"
  [ -n "$cert" ] && echo "cert = /run/secrets/pip_cert"
  echo "find-links = /wheels"
  echo "disable-pip-version-check = 1"
  echo "default-timeout = 180"
} >"$PIPCONF"
if [ -n "$links" ] && [ -d "$links" ]; then
  for w in "$links"/*.whl; do
    [ -e "$w" ] || continue   # no wheel there
    [ -e "$WHEELS/$(basename "$w")" ] || ln -f "$w" "$WHEELS/" 2>/dev/null || cp "$w" "$WHEELS/"
  done
fi
secrets=(--secret id=pip_conf,src="$PIPCONF")
[ -n "$cert" ] && secrets+=(--secret id=pip_cert,src="$cert")
for svc in postgres server edge kme; do
  if [ "${REBUILD:-1}" = 0 ] && $DOCKER image inspect qflare-$svc:ct >/dev/null 2>&1; then
    say "qflare-$svc:ct exists (REBUILD=0)"; continue
  fi
  say "building qflare-$svc"
  DOCKER_BUILDKIT=1 $DOCKER build --network host --progress plain -f docker/$svc.Dockerfile \
    --build-arg BASE_IMAGE=$BASE_TAG "${secrets[@]}" -t qflare-$svc:ct . >"$WORK/build-$svc.log" 2>&1 \
    || { tail -40 "$WORK/build-$svc.log"; exit 1; }
done
for svc in postgres server edge kme; do
  say "image qflare-$svc:ct $($DOCKER image inspect qflare-$svc:ct --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}')"
done

# 5. the federation
export QFLARE_IMAGE_TAG=ct
QFLARE_ADMIN_TOKEN=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
export QFLARE_ADMIN_TOKEN
rounds_completed() {   # from the host, through the published port (127.0.0.1:8000)
  python3 -c "import json,os,urllib.request as u;print(json.load(u.urlopen(u.Request('http://127.0.0.1:8000/v1/admin/status',headers={'Authorization':'Bearer '+os.environ['QFLARE_ADMIN_TOKEN']}),timeout=5))['rounds_completed'])" 2>/dev/null || echo -1
}
wait_round() {   # wait until the server reports at least $1 completed rounds
  local want=$1 deadline=$(( $(date +%s) + TIMEOUT ))
  while :; do
    n=$(rounds_completed)
    [ "$n" -ge "$want" ] 2>/dev/null && { say "rounds completed: $n"; return 0; }
    [ "$(date +%s)" -lt "$deadline" ] || { say "no round $want in ${TIMEOUT}s"; $COMPOSE -p $PROJECT logs --tail 40; return 1; }
    sleep 5
  done
}
hybrid_updates() {   # "<accepted updates> <of them keyed hybrid>" from the server's events
  python3 -c "import json,os,urllib.request as u
rows=json.load(u.urlopen(u.Request('http://127.0.0.1:8000/v1/admin/events?kind=update_accepted&limit=10000',headers={'Authorization':'Bearer '+os.environ['QFLARE_ADMIN_TOKEN']}),timeout=10))
print(len(rows), sum('key_source=hybrid key_ids=' in (r['detail'] or '') for r in rows))" 2>/dev/null || echo "-1 -1"
}
check_hybrid() {
  read -r n h <<<"$(hybrid_updates)"
  [ "$n" -gt 0 ] && [ "$h" = "$n" ] || { say "FAILED: $h of $n accepted updates keyed hybrid"; return 1; }
  say "accepted updates keyed hybrid (ML-KEM/X-Wing + QKD key from the KME): $h of $n"
}
verified_size() {   # the largest witness-cosigned checkpoint edge $1 verified (0: none)
  $COMPOSE -p $PROJECT logs --no-color "$1" 2>/dev/null \
    | sed -n 's/.*ledger: verified checkpoint \([0-9]*\) cosigned by .*/\1/p' | sort -n | tail -1 | grep . || echo 0
}
wait_verified() {   # wait until edge_1, edge_2, edge_3 each verified a cosigned checkpoint larger than $1, $2, $3
  local deadline=$(( $(date +%s) + TIMEOUT )) e i sizes
  while :; do
    sizes="" i=0 ok=1
    for e in edge_1 edge_2 edge_3; do
      i=$((i + 1)); n=$(verified_size $e); sizes="$sizes $e=$n"
      eval "floor=\${$i:-0}"
      [ "$n" -gt "$floor" ] || ok=0
    done
    [ $ok = 1 ] && { say "checkpoints cosigned by the witness and verified by the edges:$sizes"; return 0; }
    [ "$(date +%s)" -lt "$deadline" ] || { say "FAILED: no cosigned checkpoint verified by every edge in ${TIMEOUT}s:$sizes"; $COMPOSE -p $PROJECT logs --tail 30 witness edge_1 edge_2 edge_3; return 1; }
    sleep 5
  done
}
say "compose up"
$COMPOSE -p $PROJECT up -d --no-build
wait_round 1
wait_verified 0 0 0
say "the witness: $($COMPOSE -p $PROJECT logs --no-color witness | grep -c 'cosigned qflare.local/ledger at size') checkpoints cosigned, last: $($COMPOSE -p $PROJECT logs --no-color witness | grep 'cosigned qflare.local/ledger at size' | tail -1 | sed 's/.*| //')"
check_hybrid
say "killing the server container (SIGKILL) after $(rounds_completed) rounds"
$COMPOSE -p $PROJECT kill -s SIGKILL server
# Read once the kill has landed (a Compose command takes seconds here): what the dead server had done.
seen="$(verified_size edge_1) $(verified_size edge_2) $(verified_size edge_3)"
$COMPOSE -p $PROJECT up -d --no-build server
deadline=$(( $(date +%s) + TIMEOUT ))
until before=$(rounds_completed); [ "$before" -ge 0 ]; do
  [ "$(date +%s)" -lt "$deadline" ] || { say "FAILED: the restarted server did not answer in ${TIMEOUT}s"; exit 1; }
  sleep 1
done
say "the restarted server answers: $before rounds completed"
wait_round $((before + 1))
# shellcheck disable=SC2086
wait_verified $seen
check_hybrid
$COMPOSE -p $PROJECT ps
for svc in server witness edge_1 edge_2 edge_3; do
  say "$svc: restarts $($DOCKER inspect -f '{{.RestartCount}}' "$($COMPOSE -p $PROJECT ps -q $svc)")"
done
say "the server's starts (the second after the SIGKILL):"
$COMPOSE -p $PROJECT logs --no-color server | grep -E "QFLARE server:|resumed round|Application startup complete" | cut -c1-160 || true
say "an edge's log:"
$COMPOSE -p $PROJECT logs --no-color edge_1 | grep -E "ledger: verified|update accepted" | tail -4 || true
say "PASSED in $(( $(date +%s) - t0 )) s"
