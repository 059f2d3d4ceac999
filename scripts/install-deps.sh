#!/usr/bin/env bash
# install-deps.sh — installs the Debian packages ppd needs, only those missing.
# Idempotent: when everything is present it prints one line and touches nothing.
set -euo pipefail

pkgs=(build-essential pkg-config libmicrohttpd-dev libjansson-dev libuv1-dev check
      libpcre2-dev python3-venv python3-pip unzip ca-certificates
      prometheus    # promtool, for the /metrics check of the integration tests
      gnuplot-nox   # the speed-up chart of `make bench-adapter`, `ppd calibrate --plot`
      clang libclang-rt-14-dev   # libFuzzer + sanitizers for tests/fuzz (make fuzz; make test's seed runs)
      valgrind)   # make check-deep

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#pkgs[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
