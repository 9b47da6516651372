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
# The Docker tier (tests/e2e_docker.rs) starts its own private dockerd and
# builds its image from busybox-static: nothing is pulled. Installing them
# must not start the system's docker service (see below).
docker_pkgs=(docker.io busybox-static)

missing_of() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}

updated=""
install_pkgs() {
  export DEBIAN_FRONTEND=noninteractive
  [ -n "$updated" ] || { apt-get update -qq; updated=1; }
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

mapfile -t missing < <(missing_of "${pkgs[@]}")
mapfile -t missing_docker < <(missing_of "${docker_pkgs[@]}")
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  install_pkgs "${missing[@]}"
fi
if [ ${#missing_docker[@]} -gt 0 ]; then
  echo "setup: installing ${missing_docker[*]} (without starting dockerd)"
  # A policy-rc.d that answers 101 keeps invoke-rc.d and deb-systemd-invoke
  # from starting docker and containerd: a system dockerd would rewrite the
  # host firewall, and the tests refuse to run next to one. An existing
  # policy is left as it is.
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  install_pkgs "${missing_docker[@]}"
  if [ -n "$policy" ]; then rm -f "$policy"; trap - EXIT; fi
fi
if [ ${#missing[@]} -eq 0 ] && [ ${#missing_docker[@]} -eq 0 ]; then
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
