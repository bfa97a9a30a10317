#!/usr/bin/env bash
# Installs the Debian packages kvstash builds with, when they are missing. As root it runs
# apt-get; otherwise it prints the command for you to run.
set -euo pipefail

# clang and its runtime build the fuzzer that `make test` runs for a bounded time; curl and jq are
# the server tests' client and JSON checker; pip, setuptools and wheel install the Python binding
# offline in its test (with /usr/bin/python3 when the python3 on PATH lacks them); redis-server and
# hiredis are the Redis tier and the server that its tests start.
packages=(cmake g++ make git pkg-config python3 libgtest-dev libcli11-dev nlohmann-json3-dev
          libxxhash-dev libssl-dev libcpp-httplib-dev clang libclang-rt-14-dev curl jq
          python3-pip python3-setuptools python3-wheel redis-server libhiredis-dev)
[ "${KVSTASH_WITH_BENCH_TOOLS:-0}" = 1 ] && packages+=(gnuplot-nox)

missing=()
# npm fetches llama.cpp's source; a Node.js installed outside Debian's packages is fine too.
command -v npm >/dev/null || missing+=(npm)
# The Rust binding's tests need cargo; one from rustup (~/.cargo/bin) is fine too.
command -v cargo >/dev/null || [ -x "$HOME/.cargo/bin/cargo" ] || missing+=(cargo)
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-deps: missing Debian packages: ${missing[*]}" >&2
  echo "setup-deps: run: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "setup-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
