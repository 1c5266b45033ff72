#!/usr/bin/env bash
# Debian packages the tests and the demo need: a compiler toolchain for llama.cpp, a real sshd
# to deploy to over loopback, supervisord for hosts without an init system, Chromium for the
# dashboard test, systemd-analyze (package systemd) to parse rendered units, python3-venv for the
# Makefile's venv, and nftables (nft) for the firewall tests. Installs only what is missing, so a
# warm machine skips apt entirely.
set -euo pipefail
need=()
for pkg in cmake g++ openssh-server openssh-client supervisor chromium chromium-driver sshpass systemd python3-venv nftables; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "llamafleet: missing Debian packages: ${need[*]} (run as root or install them)" >&2
    exit 1
  fi
  echo "llamafleet: installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
