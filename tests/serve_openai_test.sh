#!/usr/bin/env bash
# Runs serve_openai_test.mjs (the official OpenAI client for Node) against a `kvstash serve` it
# starts with --api-key on a free loopback port. Installs the pinned client into build-npm/
# first when it is missing (scripts/setup-npm.sh). Usage: serve_openai_test.sh path/to/kvstash
set -u
KV=$1
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
command -v node >/dev/null || { echo "FAIL: node is not installed (Node 20 or later)"; exit 1; }
"$ROOT/scripts/setup-npm.sh" || { echo "FAIL: cannot install the openai npm package"; exit 1; }
dir=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$dir"
}
trap cleanup EXIT
unset KVSTASH_CACHE_DIR KVSTASH_API_KEY

"$KV" make-test-model -o "$dir/tiny.gguf" >/dev/null 2>&1 || { echo "FAIL: cannot make model"; exit 1; }
KEY=test-key-$$
"$KV" serve -m "$dir/tiny.gguf" --port 0 --cache-dir "$dir/store" --api-key "$KEY" >"$dir/log" 2>&1 &
pid=$!
port=""
for i in $(seq 1 600); do
  [ -z "$port" ] && port=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$dir/log" | head -1)
  [ -n "$port" ] && [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health")" = 200 ] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
[ -n "$port" ] || { echo "FAIL: the server did not start"; cat "$dir/log"; exit 1; }

KVSTASH_BASE_URL="http://127.0.0.1:$port/v1" KVSTASH_API_KEY="$KEY" KVSTASH_NPM_DIR="$ROOT/build-npm" \
  node "$HERE/serve_openai_test.mjs"
rc=$?
kill -TERM "$pid"; wait "$pid"; src=$?; pid=""
[ $src -eq 0 ] || { echo "FAIL: the server exited $src after SIGTERM"; rc=1; }
[ $rc -eq 0 ] || { echo "--- server log"; cat "$dir/log"; }
exit $rc
