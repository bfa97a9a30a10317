#!/usr/bin/env bash
# Fetches llama.cpp's source, pinned, from the npm package node-llama-cpp (which ships it as a git
# bundle), checks the bundle's sha256, clones it into third_party/llama.cpp (git-ignored) and
# applies patches/llama.cpp/*.patch in name order (each says why it exists); a patch that does not
# apply stops the build, and the old tree is kept.
# Idempotent: a tree at the pinned commit with exactly these patches, and no other change, is left
# alone; anything else (an older patch set, a hand edit) is cloned again from the cached bundle.
set -euo pipefail

NPM_PACKAGE="node-llama-cpp@3.21.1"
BUNDLE_SHA256="9336d8aab8f8e6a8919380f3641fe92e57b02fb55df1b6bd083b82491a6293b8"
LLAMA_COMMIT="80fb11ac73e66d89eae2c6a91d8a77428fa733ed"

root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/third_party/llama.cpp"
cache="$root/third_party/.download"

die() { echo "fetch-llama: error: $*" >&2; exit 1; }

patches=()
while IFS= read -r p; do patches+=("$p"); done < <(find "$root/patches/llama.cpp" -maxdepth 1 \
  -name '*.patch' 2>/dev/null | LC_ALL=C sort)
# What the tree must be: the pin plus these exact patches. The stamp (inside .git, so not part of
# the work tree) holds this and the hash of the resulting diff, which catches later hand edits.
want=$( { echo "$LLAMA_COMMIT"; for p in "${patches[@]}"; do sha256sum "$p" | cut -d' ' -f1; done; } |
  sha256sum | cut -d' ' -f1)
stamp=.git/kvstash-patches
diff_hash() { git -C "$1" diff HEAD --binary | sha256sum | cut -d' ' -f1; }
if [ -d "$dest/.git" ] && [ "$(git -C "$dest" rev-parse HEAD 2>/dev/null)" = "$LLAMA_COMMIT" ] &&
  [ "$(cat "$dest/$stamp" 2>/dev/null)" = "$want $(diff_hash "$dest")" ]; then
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
for p in "${patches[@]}"; do
  name="patches/llama.cpp/$(basename "$p")"
  git -C "$dest.part" apply --check "$p" ||
    die "$name does not apply to llama.cpp $LLAMA_COMMIT; refresh it against the pinned tree"
  git -C "$dest.part" apply "$p" || die "applying $name failed"
  echo "fetch-llama: applied $name"
done
echo "$want $(diff_hash "$dest.part")" > "$dest.part/$stamp"
rm -rf "$dest"
mv "$dest.part" "$dest"
echo "fetch-llama: llama.cpp $LLAMA_COMMIT in third_party/llama.cpp"
