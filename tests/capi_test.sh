#!/usr/bin/env bash
# The C API test (tests/capi_test.c) on two generated models of the same shape and other weights,
# and a prompt cache of the first written through llama.h (tests/prompt_cache_writer.cc).
# Usage: capi_test.sh KVSTASH_CLI CAPI_TEST PROMPT_CACHE_WRITER
set -eu
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$1" make-test-model -o "$dir/a.gguf" >/dev/null
"$1" make-test-model -o "$dir/b.gguf" --seed 7 >/dev/null
"$3" -m "$dir/a.gguf" -p "The kvstash project stores the KV cache of a prompt for later runs." \
  --prompt-cache "$dir/prompt.bin"
mkdir "$dir/scratch"
"$2" "$dir/a.gguf" "$dir/b.gguf" "$dir/scratch" "$dir/prompt.bin"
