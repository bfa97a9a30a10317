#!/usr/bin/env bash
# The C API test (tests/capi_test.c) on two generated models of the same shape and other weights.
# Usage: capi_test.sh KVSTASH_CLI CAPI_TEST
set -eu
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$1" make-test-model -o "$dir/a.gguf" >/dev/null
"$1" make-test-model -o "$dir/b.gguf" --seed 7 >/dev/null
mkdir "$dir/scratch"
"$2" "$dir/a.gguf" "$dir/b.gguf" "$dir/scratch"
