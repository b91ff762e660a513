#!/usr/bin/env bash
# Fetches the two miniupnpd daemons the UPnP tests run as the router's gateway
# (see ../shared/notes/netlab.md) into target/tools/ — test tools, not project
# dependencies:
#   miniupnpd-2.3.9/  built from Debian trixie's source package: maps ports even
#                     while its WAN address is in a reserved range (with
#                     ext_allow_private_ipv4 + ext_ip), so a mapping can be used.
#   miniupnpd-2.3.1/  Debian bookworm's binary: refuses to map on a reserved WAN
#                     address (UPnP error 501), the fallback case.
# Idempotent: does nothing when both binaries are present. Needs root (apt).
set -euo pipefail
cd "$(dirname "$0")/.."
tools="$PWD/target/tools"
new="$tools/miniupnpd-2.3.9"
old="$tools/miniupnpd-2.3.1"
mkdir -p "$tools"
export DEBIAN_FRONTEND=noninteractive

apt-get install -y -qq --no-install-recommends \
  libnftnl-dev libmnl-dev libssl-dev libcap-ng-dev uuid-dev pkg-config nftables \
  dpkg-dev xz-utils >/dev/null

if [ ! -x "$new/miniupnpd" ]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"; rm -f /etc/apt/sources.list.d/butter-trixie-src.sources' EXIT
  # Bookworm has only 2.3.1; trixie's source package is served by the same mirror.
  sed -e 's/^Types: .*/Types: deb-src/' -e 's/^Suites: .*/Suites: trixie/' \
    /etc/apt/sources.list.d/debian.sources | awk 'BEGIN{RS="";ORS="\n\n"} NR==1' \
    >/etc/apt/sources.list.d/butter-trixie-src.sources
  apt-get update -qq
  (cd "$work" && apt-get source -qq --download-only miniupnpd=2.3.9-2+deb13u1 >/dev/null)
  rm -f /etc/apt/sources.list.d/butter-trixie-src.sources
  apt-get update -qq
  tar -C "$work" -xzf "$work"/miniupnpd_2.3.9.orig.tar.gz
  src="$(find "$work" -maxdepth 1 -type d -name 'miniupnpd-2.3.9*' | head -n1)"
  (cd "$src" && ./configure --firewall=nftables --leasefile >/dev/null && make -j2 >/dev/null 2>&1)
  mkdir -p "$new"
  cp "$src/miniupnpd" "$new/"
  cp "$src/netfilter_nft/scripts/"*.sh "$new/"
fi

if [ ! -x "$old/miniupnpd" ]; then
  work="$(mktemp -d)"
  # Unpacked, not installed: installing would start a system service.
  (cd "$work" && apt-get download -qq miniupnpd-nftables >/dev/null 2>&1 || apt-get download -qq miniupnpd >/dev/null)
  dpkg -x "$work"/miniupnpd*.deb "$work/root"
  mkdir -p "$old"
  cp "$(find "$work/root" -type f -name miniupnpd | head -n1)" "$old/"
  rm -rf "$work"
fi
echo "miniupnpd: $new/miniupnpd, $old/miniupnpd"
