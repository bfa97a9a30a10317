#!/usr/bin/env bash
# The example program runs end to end and its warm and cold answers agree.
set -eu
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$1" make-test-model -o "$dir/tiny.gguf"
out=$("$2" "$dir/tiny.gguf" "$dir/example.kvs")
echo "$out"
grep -q "same answer: yes" <<<"$out"
echo "example_test: 1 passed, 0 failed"
