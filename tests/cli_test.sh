#!/usr/bin/env bash
# Drives the kvstash binary: save -> run warm vs cold, re-passed prefix, inspect/verify, and every
# error path's exit code and message. Usage: cli_test.sh path/to/kvstash
set -u
KV=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
check() { if eval "$1"; then ok; else bad "$2"; fi; }
# expect_exit CODE PATTERN -- command...: exit code and a stderr line matching PATTERN
expect_exit() {
  local code=$1 pattern=$2; shift 3
  "$@" >"$dir/out" 2>"$dir/err"; local rc=$?
  if [ $rc -ne "$code" ]; then bad "exit $rc (want $code): $*"; cat "$dir/err"; return; fi
  if [ -n "$pattern" ] && ! grep -q -- "$pattern" "$dir/err"; then bad "stderr lacks '$pattern': $*"; cat "$dir/err"; return; fi
  ok
}

M="$dir/tiny.gguf"
$KV make-test-model -o "$M" || { echo "cannot make model"; exit 1; }
PREFIX="You are a terse assistant. Answer each question in a few words. Example: Q: 2+2? A: 4."
Q=" Q: What colour is the sky? A:"

expect_exit 0 "" -- $KV save -m "$M" --prefix "$PREFIX" -o "$dir/s.kvs" --json
check "grep -q '\"n_tokens\"' '$dir/out' && grep -q '\"bytes\"' '$dir/out' && grep -q prefill_ms '$dir/out' && grep -q save_ms '$dir/out'" "save --json fields"

$KV run -m "$M" --session "$dir/s.kvs" -p "$Q" -n 24 --temp 0 >"$dir/warm.txt" 2>/dev/null
$KV run -m "$M" --prefix "$PREFIX" -p "$Q" -n 24 --temp 0 >"$dir/cold.txt" 2>/dev/null
check "cmp -s '$dir/warm.txt' '$dir/cold.txt'" "warm and cold stdout differ"
check "[ \$(wc -c <'$dir/warm.txt') -gt 10 ]" "warm output is empty"

# Seeded sampling matches too.
$KV run -m "$M" --session "$dir/s.kvs" -p "$Q" -n 16 --temp 0.8 -s 42 >"$dir/w2" 2>/dev/null
$KV run -m "$M" --prefix "$PREFIX" -p "$Q" -n 16 --temp 0.8 -s 42 >"$dir/c2" 2>/dev/null
check "cmp -s '$dir/w2' '$dir/c2'" "seeded warm/cold differ"

# Re-passed prefix: only the prompt's own tokens are decoded.
$KV run -m "$M" --session "$dir/s.kvs" --prefix "$PREFIX" -p "$Q" -n 4 --temp 0 --json >"$dir/j" 2>/dev/null
nq=$(python3 -c "import json;d=json.load(open('$dir/j'));print(d['n_decoded_prompt_tokens'], d['n_reused_tokens'], d['n_prompt_tokens'], d['stop_reason'], len(d['tokens']))")
read -r decoded reused total reason ntok <<<"$nq"
check "[ $decoded -gt 0 ] && [ $((decoded + reused)) -eq $total ] && [ '$reason' = n_predict ] && [ $ntok -eq 4 ]" "re-passed prefix json: $nq"
$KV run -m "$M" --session "$dir/s.kvs" -p "$Q" -n 4 --temp 0 --json >"$dir/j2" 2>/dev/null
check "python3 -c \"import json;a=json.load(open('$dir/j'));b=json.load(open('$dir/j2'));assert a['n_decoded_prompt_tokens']==b['n_decoded_prompt_tokens'] and a['tokens']==b['tokens'], (a,b)\"" "re-passed prefix decodes only the prompt"
for key in text tokens n_prompt_tokens n_reused_tokens n_decoded_prompt_tokens load_ms prompt_ms ttft_ms generate_ms stop_reason; do
  check "grep -q '\"$key\"' '$dir/j'" "run --json lacks $key"
done
# A changed prefix is still right: same text as the cold run of the changed prefix.
$KV run -m "$M" --session "$dir/s.kvs" --prefix "You are a verbose assistant." -p "$Q" -n 12 --temp 0 >"$dir/w3" 2>/dev/null
$KV run -m "$M" --prefix "You are a verbose assistant." -p "$Q" -n 12 --temp 0 >"$dir/c3" 2>/dev/null
check "cmp -s '$dir/w3' '$dir/c3'" "changed prefix warm/cold differ"
# Stop strings.
$KV run -m "$M" --session "$dir/s.kvs" -p "$Q" -n 24 --temp 0 --json >"$dir/full.json" 2>/dev/null
stop=$(python3 -c "import json;t=json.load(open('$dir/full.json'))['text'];print(t[len(t)//2:len(t)//2+3])")
$KV run -m "$M" --session "$dir/s.kvs" -p "$Q" -n 24 --temp 0 --stop "$stop" --json >"$dir/stop.json" 2>/dev/null
check "python3 -c \"import json;d=json.load(open('$dir/stop.json'));assert d['stop_reason']=='stop' and '$stop' not in d['text'], d\"" "stop string"

# inspect / verify
expect_exit 0 "" -- $KV inspect "$dir/s.kvs"
check "grep -q 'fingerprint' '$dir/out' && grep -q 'checksums ok' '$dir/out' && grep -q 'terse assistant' '$dir/out'" "inspect text"
expect_exit 0 "" -- $KV inspect "$dir/s.kvs" --json
check "python3 -c \"import json;d=json.load(open('$dir/out'));assert d['n_tokens']>10 and d['checksums']=='ok' and d['context']['cache_type_k']=='f16' and len(d['model']['fingerprint'])==32\"" "inspect --json"
expect_exit 0 "" -- $KV verify -m "$M" "$dir/s.kvs"
expect_exit 0 "" -- $KV verify -m "$M" "$dir/s.kvs" --json
check "grep -q '\"ok\":true' '$dir/out'" "verify --json"

# Error paths: exit 1 with one 'error:' line naming the file; exit 2 for usage.
$KV make-test-model -o "$dir/other.gguf" --seed 9 >/dev/null
expect_exit 1 "error: session '$dir/s.kvs' was saved with another model" -- $KV verify -m "$dir/other.gguf" "$dir/s.kvs"
expect_exit 1 "error: session '$dir/s.kvs' was saved with another model" -- $KV run -m "$dir/other.gguf" --session "$dir/s.kvs" -p x
expect_exit 1 "cache type K=f16, this context uses q8_0: open without --cache-type-k" -- $KV run -m "$M" --session "$dir/s.kvs" -p x --cache-type-k q8_0
expect_exit 1 "flash attention=on, this context uses off" -- $KV run -m "$M" --session "$dir/s.kvs" -p x -fa off
expect_exit 1 "does not exist" -- $KV run -m "$M" --session "$dir/missing.kvs" -p x
expect_exit 1 "model '$dir/nope.gguf' does not exist" -- $KV run -m "$dir/nope.gguf" -p x
head -c 1000 "$dir/s.kvs" >"$dir/cut.kvs"
expect_exit 1 "error: session file '$dir/cut.kvs' is corrupt: the file is truncated" -- $KV run -m "$M" --session "$dir/cut.kvs" -p x
expect_exit 1 "is corrupt" -- $KV inspect "$dir/cut.kvs"
expect_exit 1 "is corrupt" -- $KV verify -m "$M" "$dir/cut.kvs"
expect_exit 1 "is a directory" -- $KV inspect "$dir"
printf 'hello' >"$dir/junk.kvs"
expect_exit 1 "not a kvstash session file" -- $KV inspect "$dir/junk.kvs"
expect_exit 1 "cannot create" -- $KV save -m "$M" --prefix x -o "$dir/no/such/dir/s.kvs"
expect_exit 1 "prefix file '$dir/nofile' cannot be read" -- $KV save -m "$M" --prefix-file "$dir/nofile" -o "$dir/x.kvs"
expect_exit 1 "unknown K cache type 'f17'" -- $KV save -m "$M" --prefix x -o "$dir/x.kvs" --cache-type-k f17
expect_exit 1 "context is full" -- $KV run -m "$M" -c 16 --prefix "$(printf 'word %.0s' $(seq 1 400))" -p x
expect_exit 1 "more threads than llama.cpp supports" -- $KV run -m "$M" -p x -t 100000
expect_exit 1 "batch sizes must be at least 1" -- $KV save -m "$M" --prefix x -o "$dir/x.kvs" -b 0
expect_exit 1 "GiB of KV cache, more than this machine's" -- $KV run -m "$M" -p x -c 999999999
expect_exit 1 "use a smaller -c" -- $KV run -m "$M" -p x -c 4294967295
expect_exit 1 "prompt file '$dir' is a directory" -- $KV run -m "$M" -f "$dir"
expect_exit 2 "" -- $KV run -m "$M"
expect_exit 2 "" -- $KV save -m "$M" -o "$dir/x.kvs"
expect_exit 2 "" -- $KV bogus-command
expect_exit 2 "" -- $KV run -m "$M" -p x -n notanumber
expect_exit 2 "" -- $KV save -m "$M" --prefix a --prefix-file b -o x
expect_exit 0 "" -- $KV --version
check "grep -q 'kvstash 0' '$dir/out' && grep -q 'llama.cpp' '$dir/out'" "--version"
for cmd in save run inspect verify make-test-model; do
  expect_exit 0 "" -- $KV $cmd --help
  check "grep -q 'Example' '$dir/out'" "$cmd --help has examples"
done

echo "cli_test: $pass passed, $fail failed"
[ $fail -eq 0 ]
