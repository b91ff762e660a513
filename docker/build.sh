#!/usr/bin/env bash
# Builds the static binaries and the two images (butter:local,
# butter-introducer:local) that docker-compose.yml runs. No image is pulled.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked \
  --target "$target" -p butter -p butter-introducer --bin butter --bin butter-introducer
mkdir -p docker/bin
# Where cargo put them: CARGO_TARGET_DIR when set (relative to the repository).
out="${CARGO_TARGET_DIR:-target}"
for bin in butter butter-introducer; do
  # Stripped of symbols too (the release profile keeps them for backtraces).
  objcopy --strip-all "$out/$target/release/$bin" "docker/bin/$bin"
done
if docker compose version >/dev/null 2>&1; then compose="docker compose"; else compose="docker-compose"; fi
$compose build
docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^butter(-introducer)?:local '
