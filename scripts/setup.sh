#!/usr/bin/env bash
# Prepares this machine to build, run and test sluice. Idempotent: installs
# only the Debian packages that are missing and mounts bpffs and tracefs only
# if they are not mounted yet. Needs root.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/setup.sh: run as root (it installs packages and mounts bpffs)" >&2
  exit 1
fi

# Build: clang + libbpf headers + kernel UAPI headers. Run/test: iproute2,
# ping, nsenter (util-linux). Later dataplane work and benchmarks: the rest.
pkgs=(clang llvm libbpf-dev linux-libc-dev iproute2 iputils-ping util-linux
      bpftool ethtool nftables iperf3 tcpdump redis-server mariadb-server curl wrk)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "setup: all packages present"
fi

if ! mountpoint -q /sys/fs/bpf || [ "$(stat -f -c %T /sys/fs/bpf)" != "bpf_fs" ]; then
  mkdir -p /sys/fs/bpf
  mount -t bpf -o mode=0700 bpf /sys/fs/bpf
  echo "setup: mounted bpffs at /sys/fs/bpf"
fi
if ! mountpoint -q /sys/kernel/tracing; then
  mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null && echo "setup: mounted tracefs" || true
fi
mkdir -p /run/netns
