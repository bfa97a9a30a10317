#!/usr/bin/env bash
# kvstash import from the command line: a prompt cache written by llama.cpp's own llama-completion
# (--prompt-cache) imports and runs, and so on for the refusals' exit codes and messages.
# Usage: import_cli_test.sh path/to/kvstash path/to/llama-completion (scripts/bench.sh builds it into
# build-llama-tools/; without it, tests/prompt_cache_writer.cc stands in and writes the same file).
set -u
KV=$1
LC=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
. "$(dirname "$0")/test_lib.sh"

M="$dir/tiny.gguf"
$KV make-test-model -o "$M" || { echo "cannot make model"; exit 1; }
$KV make-test-model -o "$dir/other.gguf" --seed 7 || { echo "cannot make model"; exit 1; }
PREFIX="You are a terse assistant. Answer each question in a few words. Example: Q: 2+2? A: 4."
Q=" Q: What colour is the sky? A:"

# Refusals without llama.cpp's tools.
printf 'hello\n' >"$dir/text"
expect_exit 1 "does not exist" -- $KV import -m "$M" "$dir/missing" -o "$dir/x.kvs"
expect_exit 1 "not a llama.cpp session or sequence file" -- $KV import -m "$M" "$dir/text" -o "$dir/x.kvs"
expect_exit 1 "GGUF model" -- $KV import -m "$M" "$M" -o "$dir/x.kvs"
$KV save -m "$M" --prefix "$PREFIX" -o "$dir/s.kvs" 2>/dev/null
expect_exit 1 "already a kvstash session" -- $KV import -m "$M" "$dir/s.kvs" -o "$dir/x.kvs"
expect_exit 2 "" -- $KV import -m "$M" "$dir/s.kvs"
check "[ ! -e '$dir/x.kvs' ]" "a refused import wrote its output"

[ -x "$LC" ] || { echo "FAIL: no llama-completion or stand-in at '$LC'"; exit 1; }
echo "writing the prompt cache with $(basename "$LC")"
"$LC" -m "$M" -p "$PREFIX" --prompt-cache "$dir/p.bin" -n 1 -no-cnv -c 4096 --temp 0 >/dev/null 2>&1
check "[ \"\$(head -c 4 '$dir/p.bin')\" = nsgg ]" "llama-completion wrote no session file"
expect_exit 0 "imported" -- $KV import -m "$M" "$dir/p.bin" -o "$dir/p.kvs"
$KV inspect "$dir/p.kvs" --json >"$dir/i.json"
check "python3 -c \"import json;d=json.load(open('$dir/i.json'));assert d['n_tokens']>20 and d['checksums']=='ok', d\"" "inspect of the imported session"
expect_exit 0 "" -- $KV verify -m "$M" "$dir/p.kvs"
$KV run -m "$M" --session "$dir/p.kvs" -p "$Q" -n 16 --temp 0 >"$dir/warm.txt" 2>/dev/null
$KV run -m "$M" --prefix "$PREFIX" -p "$Q" -n 16 --temp 0 >"$dir/cold.txt" 2>/dev/null
check "[ \$(wc -c <'$dir/warm.txt') -gt 10 ]" "warm output from the imported session is empty"
# llama-completion's own matmul (llamafile) is not kvstash's batch-invariant one, so the KV may
# differ in the last bits; greedy text on the tiny model does not.
check "cmp -s '$dir/warm.txt' '$dir/cold.txt'" "imported warm and kvstash cold text differ"
expect_exit 1 "was not computed by model" -- $KV import -m "$dir/other.gguf" "$dir/p.bin" -o "$dir/o.kvs"
head -c 1000 "$dir/p.bin" >"$dir/cut.bin"
expect_exit 1 "cut short" -- $KV import -m "$M" "$dir/cut.bin" -o "$dir/c.kvs"
expect_exit 0 "" -- $KV import -m "$M" "$dir/p.bin" -o "$dir/j.kvs" --json
check "grep -q '\"n_tokens\"' '$dir/out'" "import --json"
echo "import_cli_test: $pass passed, $fail failed"
[ $fail -eq 0 ]
