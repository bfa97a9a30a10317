#!/usr/bin/env bash
# Fetches llama.cpp's source, pinned, from the npm package node-llama-cpp (which ships it as a git
# bundle), checks the bundle's sha256 and clones it into third_party/llama.cpp (git-ignored).
# Idempotent: a tree already at the pinned commit is left alone.
set -euo pipefail

NPM_PACKAGE="node-llama-cpp@3.21.1"
BUNDLE_SHA256="9336d8aab8f8e6a8919380f3641fe92e57b02fb55df1b6bd083b82491a6293b8"
LLAMA_COMMIT="80fb11ac73e66d89eae2c6a91d8a77428fa733ed"

root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/third_party/llama.cpp"
cache="$root/third_party/.download"

die() { echo "fetch-llama: error: $*" >&2; exit 1; }

if [ -d "$dest/.git" ] && [ "$(git -C "$dest" rev-parse HEAD 2>/dev/null)" = "$LLAMA_COMMIT" ]; then
  exit 0
fi

command -v npm >/dev/null || die "npm is not installed; install Debian's 'npm' package (apt-get install npm) and run again"
command -v git >/dev/null || die "git is not installed; apt-get install git"

mkdir -p "$cache"
bundle="$cache/gitRelease.bundle"
if [ ! -f "$bundle" ] || [ "$(sha256sum "$bundle" | cut -d' ' -f1)" != "$BUNDLE_SHA256" ]; then
  echo "fetch-llama: downloading $NPM_PACKAGE from the npm registry"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "$NPM_PACKAGE" >/dev/null) ||
    die "'npm pack $NPM_PACKAGE' failed; check that the npm registry is reachable (npm ping)"
  tar -xzf "$tmp"/node-llama-cpp-*.tgz -C "$tmp" package/llama/gitRelease.bundle ||
    die "$NPM_PACKAGE has no llama/gitRelease.bundle; the pinned version may have been unpublished"
  mv "$tmp/package/llama/gitRelease.bundle" "$bundle.part"
  got=$(sha256sum "$bundle.part" | cut -d' ' -f1)
  if [ "$got" != "$BUNDLE_SHA256" ]; then
    rm -f "$bundle.part"
    die "sha256 of llama/gitRelease.bundle is $got, expected $BUNDLE_SHA256; the package was altered or the pin in scripts/fetch-llama.sh is stale"
  fi
  mv "$bundle.part" "$bundle"
fi

rm -rf "$dest.part"
git clone --quiet "$bundle" "$dest.part" 2>/dev/null || die "could not clone $bundle"
git -C "$dest.part" -c advice.detachedHead=false checkout --quiet "$LLAMA_COMMIT" ||
  die "bundle does not contain commit $LLAMA_COMMIT"
rm -rf "$dest"
mv "$dest.part" "$dest"
echo "fetch-llama: llama.cpp $LLAMA_COMMIT in third_party/llama.cpp"
