#!/usr/bin/env bash
# The container test: builds the FROM-scratch images, brings the network of
# docker-compose.yml up (introducer, 3 peers on each of two LANs), checks that
# every peer knows another, shares a file on LAN 1 and fetches it intact on
# LAN 2, stops the sharing peer and fetches again from another LAN-2 peer,
# restarts the stopped peer (same identity, same stored bytes), and tears
# everything down, also on failure: no container, network or volume is left.
#
# Needs Docker and docker-compose (1.29) or `docker compose` (v2); no registry.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
export COMPOSE_PROJECT_NAME=buttertest
if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
work=$(mktemp -d)
cleanup() {
  status=$?
  if [ "$status" -ne 0 ]; then
    echo "compose test FAILED; the peers' last log lines:" >&2
    for c in $(docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"); do
      echo "--- $(docker inspect -f '{{.Name}}' "$c")" >&2
      docker logs --tail 15 "$c" >&2 2>&1 || true
    done
  fi
  "${compose[@]}" down -v --remove-orphans -t 2 >/dev/null 2>&1 || true
  rm -rf "$work"
  left=$(docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"
         docker network ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"
         docker volume ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")
  if [ -n "$left" ]; then echo "left behind: $left" >&2; status=1; fi
  exit "$status"
}
trap cleanup EXIT
"${compose[@]}" down -v --remove-orphans -t 2 >/dev/null 2>&1 || true

bash docker/build.sh
echo "images built in $((SECONDS - start)) s"
"${compose[@]}" up -d --scale lan1=3 --scale lan2=3
peers() {
  docker ps -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
    --filter "label=com.docker.compose.service=$1" | sort
}
known() { docker exec "$1" /butter peers local 2>/dev/null | grep -cE '^[0-9a-f]{64} ' || true; }
# Polls with a deadline: nothing outside the containers can await their tables.
until_true() {
  local what=$1 deadline=$((SECONDS + $2)); shift 2
  until "$@"; do
    if [ $SECONDS -ge $deadline ]; then echo "timed out: $what" >&2; return 1; fi
    sleep 1
  done
}
lan1=($(peers lan1)); lan2=($(peers lan2))
[ ${#lan1[@]} -eq 3 ] && [ ${#lan2[@]} -eq 3 ] || { echo "expected 3 peers per LAN" >&2; exit 1; }
for c in "${lan1[@]}" "${lan2[@]}"; do
  until_true "peer $c knows another" 60 test "$(known "$c")" -ge 1
  echo "peer $c knows $(known "$c") hosts"
done
healthy() { test "$(docker inspect -f '{{.State.Health.Status}}' "$1")" = healthy; }
for c in "${lan1[@]}" "${lan2[@]}"; do until_true "peer $c healthy" 60 healthy "$c"; done
echo "every peer healthy and knows another"
# Same LAN: found by multicast (each LAN-1 peer heard another's announcement).
for c in "${lan1[@]}"; do
  heard=$(docker exec "$c" /butter stats local | awk '$1 == "mcast_received" {print $2}')
  [ "${heard:-0}" -gt 0 ] || { echo "peer $c heard no LAN announcement" >&2; exit 1; }
done

# Share on LAN 1, fetch on LAN 2.
head -c $((5 * 1024 * 1024 + 123)) /dev/urandom > "$work/shared.bin"
sharer=${lan1[0]}
docker cp "$work/shared.bin" "$sharer:/shared.bin"
key=$(docker exec "$sharer" /butter share /shared.bin --bootstrap local | sed -n 1p)
echo "shared on LAN 1 as $key"
fetch_on() {
  docker exec "$1" /butter fetch "$key" -o /fetched.bin --bootstrap local
  docker cp "$1:/fetched.bin" "$work/fetched.bin"
  cmp "$work/shared.bin" "$work/fetched.bin"
  rm -f "$work/fetched.bin"
}
fetch_on "${lan2[0]}"
echo "fetched intact on LAN 2"

# The sharing peer stops; another LAN-2 peer fetches.
id_before=$(docker exec "$sharer" /butter id)
bytes_before=$(docker exec "$sharer" /butter stats local | awk '$1 == "store_bytes" {print $2}')
docker stop -t 5 "$sharer" >/dev/null
fetch_on "${lan2[1]}"
echo "fetched intact on LAN 2 with the sharer stopped"

# The stopped peer comes back as itself, with what it stored.
docker start "$sharer" >/dev/null
until_true "restarted peer healthy" 60 healthy "$sharer"
id_after=$(docker exec "$sharer" /butter id)
bytes_after=$(docker exec "$sharer" /butter stats local | awk '$1 == "store_bytes" {print $2}')
[ "$id_before" = "$id_after" ] || { echo "identity changed: $id_before -> $id_after" >&2; exit 1; }
[ "${bytes_before:-0}" -gt 0 ] && [ "$bytes_after" -ge "$bytes_before" ] \
  || { echo "stored bytes before $bytes_before, after $bytes_after" >&2; exit 1; }
echo "restarted peer kept its identity ${id_after:0:10} and its $bytes_after stored bytes"
until_true "restarted peer knows another" 60 test "$(known "$sharer")" -ge 1
echo "compose test passed in $((SECONDS - start)) s"
