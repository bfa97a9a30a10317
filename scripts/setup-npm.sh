#!/usr/bin/env bash
# Installs the npm packages the tests use (the official OpenAI client, pinned) into build-npm/
# (git-ignored), when they are missing. Idempotent; needs npm and the npm registry the first time.
set -euo pipefail

OPENAI_VERSION="5.23.2"  # supports Node 20; no dependencies of its own

root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/build-npm"
installed=$(sed -n 's/^  "version": "\(.*\)",$/\1/p' "$dest/node_modules/openai/package.json" 2>/dev/null || true)
[ "$installed" = "$OPENAI_VERSION" ] && exit 0

command -v npm >/dev/null || { echo "setup-npm: npm is not installed (apt-get install npm)" >&2; exit 1; }
echo "setup-npm: installing openai@$OPENAI_VERSION into $dest"
mkdir -p "$dest"
npm install --prefix "$dest" --no-audit --no-fund --save-exact --silent "openai@$OPENAI_VERSION"
