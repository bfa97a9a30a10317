#!/usr/bin/env bash
# llama.cpp command lines against kvstash: the examples of llama.cpp's own docs
# (tools/completion/README.md, docs/build.md) parse with llama.cpp's meaning, --prompt-cache round
# trips like llama-completion's, and a full prompt after --session decodes only what follows the
# session. Usage: llama_flags_test.sh path/to/kvstash
set -u
KV=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
. "$(dirname "$0")/test_lib.sh"

M="$dir/tiny.gguf"
$KV make-test-model -o "$M" || { echo "cannot make model"; exit 1; }
SYS="You are a terse assistant. Answer each question in a few words. Example: Q: 2+2? A: 4."
Q=" Q: What colour is the sky? A:"
# same_output NAME -- ARGS_A -- ARGS_B: both runs exit 0 with the same stdout.
same_output() {
  local name=$1; shift 2
  local a=() b=()
  while [ "$1" != -- ]; do a+=("$1"); shift; done
  shift
  b=("$@")
  $KV "${a[@]}" >"$dir/a.out" 2>"$dir/a.err"; local ra=$?
  $KV "${b[@]}" >"$dir/b.out" 2>"$dir/b.err"; local rb=$?
  if [ $ra -ne 0 ] || [ $rb -ne 0 ]; then bad "$name: exit $ra / $rb"; cat "$dir/a.err" "$dir/b.err"; return; fi
  check "cmp -s '$dir/a.out' '$dir/b.out'" "$name: outputs differ"
}
jq_() { python3 -c "import json,sys;d=json.load(open(sys.argv[1]));print($2)" "$1"; }

# --- The examples of llama.cpp's docs, the model swapped for the test model.
# tools/completion/README.md: llama-completion -m M -no-cnv --prompt "Once upon a time"
same_output "-no-cnv --prompt" -- run -m "$M" -no-cnv --prompt "Once upon a time" -n 8 --temp 0 \
  -- run -m "$M" -p "Once upon a time" -n 8 --temp 0
# ... --single-turn -sys "You are a helpful assistant" -p "Hello" (-sys: the stable prefix)
same_output "-sys -p" -- run -m "$M" -sys "You are a helpful assistant" -p "Hello" -n 8 --temp 0 \
  -- run -m "$M" --prefix "You are a helpful assistant" -p "Hello" -n 8 --temp 0
# ... --ignore-eos -n -1 (here -n 12: the test model may never say EOS, so count the tokens)
expect_exit 0 "" -- $KV run -m "$M" --ignore-eos -n 12 -p "Once upon a time" --json
check "[ \"\$(jq_ '$dir/out' 'len(d[\"tokens\"]), d[\"stop_reason\"]')\" = '12 n_predict' ]" "--ignore-eos -n 12"
# docs/build.md: llama-cli -m M -p "Hi you how are you" -ngl 99 (a CPU build ignores -ngl)
same_output "-ngl 99" -- run -m "$M" -p "Hi you how are you" -ngl 99 -n 6 --temp 0 \
  -- run -m "$M" -p "Hi you how are you" -n 6 --temp 0
# docs/build.md: -p "Building a website can be done in 10 steps:" -n 50 (here 5: counted)
expect_exit 0 "" -- $KV run -m "$M" -p "Building a website can be done in 10 steps:" --predict 5 --json
check "[ \"\$(jq_ '$dir/out' 'len(d[\"tokens\"])')\" = 5 ]" "--predict 5"
# docs/build.md: -ngl 100 -c 16384 -t 10 -n -2 -cnv: conversation mode is kvstash chat's.
expect_exit 2 "kvstash chat" -- $KV run -m "$M" -ngl 100 -c 16384 -t 10 -n -2 -cnv
# docs/multi-gpu.md: -ctk f16 -ctv f16; kvstash records the types in the session.
expect_exit 0 "" -- $KV save -m "$M" -sys "$SYS" -ctk q8_0 -ctv q8_0 -fa on -ngl 0 -tb 2 -o "$dir/q8.kvs"
$KV inspect "$dir/q8.kvs" --json >"$dir/q8.json"
types=$(jq_ "$dir/q8.json" 'd["context"]["cache_type_k"], d["context"]["cache_type_v"]')
check "[ '$types' = 'q8_0 q8_0' ]" "save -ctk/-ctv: $types"
expect_exit 0 "" -- $KV verify -m "$M" -ngl 0 "$dir/q8.kvs"
same_output "-ctk/-ctv run" -- run -m "$M" --session "$dir/q8.kvs" -ctk q8_0 -ctv q8_0 -p "$Q" -n 6 --temp 0 \
  -- run -m "$M" --session "$dir/q8.kvs" --cache-type-k q8_0 --cache-type-v q8_0 -p "$Q" -n 6 --temp 0

# --- Sampling and batch spellings mean what the kvstash spellings mean.
# -s -1 is llama.cpp's random seed (its default); two runs then differ, as without -s.
expect_exit 0 "" -- $KV run -m "$M" -p "$Q" -n 16 --temp 1.5 --top-k 0 -s -1 --json
cp "$dir/out" "$dir/rand1.json"
expect_exit 0 "" -- $KV run -m "$M" -p "$Q" -n 16 --temp 1.5 --top-k 0 -s -1 --json
check "[ \"\$(jq_ '$dir/out' 'd[\"tokens\"]')\" != \"\$(jq_ '$dir/rand1.json' 'd[\"tokens\"]')\" ]" "-s -1 is not random"
same_output "--temperature" -- run -m "$M" -p "$Q" -n 8 --temperature 0.7 -s 5 \
  -- run -m "$M" -p "$Q" -n 8 --temp 0.7 -s 5
same_output "-b/-ub/-tb on run" -- run -m "$M" -p "$SYS$Q" -n 4 --temp 0 -b 16 -ub 8 -tb 1 \
  -- run -m "$M" -p "$SYS$Q" -n 4 --temp 0 --batch-size 16 --ubatch-size 8 --threads-batch 1
same_output "--repeat-penalty 1 is off" -- run -m "$M" -p "$Q" -n 16 --temp 0 --repeat-penalty 1 --repeat-last-n 8 \
  -- run -m "$M" -p "$Q" -n 16 --temp 0
# The test model never repeats itself greedily, so a penalty above 1 changes nothing; one below 1
# (a bonus) does, counting the prompt's tokens as llama-completion does.
$KV run -m "$M" -p "$Q" -n 32 --temp 0 --repeat-penalty 0.5 --repeat-last-n 64 >"$dir/pen" 2>/dev/null
$KV run -m "$M" -p "$Q" -n 32 --temp 0 >"$dir/nopen" 2>/dev/null
check "! cmp -s '$dir/pen' '$dir/nopen'" "--repeat-penalty 0.5 changed nothing"
same_output "--repeat-last-n 0 is off" -- run -m "$M" -p "$Q" -n 16 --temp 0 --repeat-penalty 0.5 --repeat-last-n 0 \
  -- run -m "$M" -p "$Q" -n 16 --temp 0
expect_exit 1 "repeat penalty -1.000000 is not a positive number" -- $KV run -m "$M" -p "$Q" -n 2 --repeat-penalty -1
# -r: llama.cpp's reverse prompt ends the answer there, as --stop does.
$KV run -m "$M" -p "$Q" -n 24 --temp 0 --json >"$dir/full.json" 2>/dev/null
stop=$(jq_ "$dir/full.json" 'd["text"][len(d["text"])//2:len(d["text"])//2+3]')
expect_exit 0 "" -- $KV run -m "$M" -p "$Q" -n 24 --temp 0 -r "$stop" --json
check "[ \"\$(jq_ '$dir/out' 'd[\"stop_reason\"]')\" = stop ]" "-r did not stop"

# --- Escapes: llama.cpp turns \n in -p and -sys into a newline unless --no-escape.
same_output "-p escapes" -- run -m "$M" -p 'Line one\nLine two\t!' -n 6 --temp 0 \
  -- run -m "$M" -p $'Line one\nLine two\t!' -n 6 --temp 0
same_output "-sys escapes" -- run -m "$M" -sys 'Be brief.\n' -p "$Q" -n 6 --temp 0 \
  -- run -m "$M" --prefix $'Be brief.\n' -p "$Q" -n 6 --temp 0
same_output "--no-escape" -- run -m "$M" --no-escape -p 'a\nb' -n 6 --temp 0 \
  -- run -m "$M" -p 'a\\nb' -n 6 --temp 0
# -f -: the prompt from stdin; a prompt file loses one trailing newline, as in llama.cpp.
printf '%s\n' "$Q" >"$dir/q.txt"
printf '%s' "$Q" | $KV run -m "$M" -f - -n 6 --temp 0 >"$dir/stdin.out" 2>"$dir/err"
$KV run -m "$M" -f "$dir/q.txt" -n 6 --temp 0 >"$dir/file.out" 2>/dev/null
$KV run -m "$M" -p "$Q" -n 6 --temp 0 >"$dir/p.out" 2>/dev/null
check "cmp -s '$dir/stdin.out' '$dir/p.out' && cmp -s '$dir/file.out' '$dir/p.out'" "-f - / -f FILE differ from -p"

# --- Unknown and mistyped flags: named, with the closest spelling, exit 2.
expect_exit 2 "unknown option '-xyz'" -- $KV run -m "$M" -p x -xyz
expect_exit 2 "did you mean '-ctk'" -- $KV run -m "$M" -p x -ctx q8_0
expect_exit 2 "did you mean '--temperature'" -- $KV run -m "$M" -p x --temprature 0
expect_exit 2 "unknown option '-sys' for 'inspect'" -- $KV inspect -sys x "$dir/q8.kvs"
$KV run -m "$M" -p x -xyz --json >"$dir/xyz.json" 2>/dev/null
check "[ \"\$(jq_ '$dir/xyz.json' 'd[\"error\"][\"code\"]')\" = usage ]" "unknown option with --json"

# --- --prompt-cache: llama-completion's meaning. The prompt is the whole prompt; the file keeps
# its state, the next run reuses the longest common prefix.
PC="$dir/pc.kvs"
expect_exit 0 "" -- $KV run -m "$M" -p "$SYS$Q" -n 8 --temp 0 --prompt-cache "$PC" --json
cp "$dir/out" "$dir/pc1.json"
check "[ -f '$PC' ] && [ \"\$(jq_ '$dir/pc1.json' 'd[\"n_reused_tokens\"]')\" = 0 ]" "first --prompt-cache run"
$KV inspect "$PC" --json >"$dir/pc.json"
check "[ \"\$(jq_ '$dir/pc.json' 'd[\"n_tokens\"]')\" = \"\$(jq_ '$dir/pc1.json' 'd[\"n_prompt_tokens\"]')\" ]" "--prompt-cache holds the prompt's tokens"
expect_exit 0 "" -- $KV run -m "$M" -p "$SYS$Q" -n 8 --temp 0 --prompt-cache "$PC" --json
check "python3 -c \"import json;a=json.load(open('$dir/pc1.json'));b=json.load(open('$dir/out'));assert b['n_decoded_prompt_tokens']==0 and b['n_reused_tokens']==a['n_prompt_tokens'] and a['text']==b['text'], (a,b)\"" "second --prompt-cache run decodes nothing and answers the same"
# Another question after the same system prompt: the system prompt's tokens are reused.
expect_exit 0 "reused" -- $KV run -m "$M" -p "$SYS Q: Who are you? A:" -n 8 --temp 0 --prompt-cache "$PC"
expect_exit 0 "" -- $KV run -m "$M" -p "$SYS Q: Who are you? A:" -n 8 --temp 0 --prompt-cache "$PC" --prompt-cache-ro --json
check "python3 -c \"import json;b=json.load(open('$dir/out'));assert b['n_reused_tokens']==b['n_prompt_tokens'], b\"" "the second question was not saved"
cp "$PC" "$dir/pc.copy"
expect_exit 0 "" -- $KV run -m "$M" -p "$SYS Q: Third? A:" -n 8 --temp 0 --prompt-cache "$PC" --prompt-cache-ro
check "cmp -s '$PC' '$dir/pc.copy'" "--prompt-cache-ro wrote the file"
expect_exit 0 "" -- $KV run -m "$M" -p "$SYS$Q" -n 8 --temp 0 --prompt-cache "$dir/all.kvs" --prompt-cache-all --json
want=$(jq_ "$dir/out" 'd["n_prompt_tokens"] + len(d["tokens"])')
$KV inspect "$dir/all.kvs" --json >"$dir/all.json"
check "[ \"\$(jq_ '$dir/all.json' 'd[\"n_tokens\"]')\" = $want ]" "--prompt-cache-all keeps the generated tokens"
# A llama-completion script's command line, unchanged but for the binary: the second run reuses the
# whole prompt and answers the same.
LC=(-m "$M" -f "$dir/lc.txt" -n 8 --temp 0 -c 2048 -t 2 -ngl 99 -fa auto --prompt-cache "$dir/lc.kvs"
  --no-display-prompt -no-cnv --log-disable --no-warmup -e)
printf '%s\\nQ: Why? A:\n' "$SYS" >"$dir/lc.txt"
expect_exit 0 "reused 0 of" -- $KV run "${LC[@]}"
cp "$dir/out" "$dir/lc1.out"
expect_exit 0 "reused \([0-9]*\) of \1 prompt tokens (prompt cache), decoded 0" -- $KV run "${LC[@]}"
check "cmp -s '$dir/out' '$dir/lc1.out'" "the llama-completion command line answered differently warm"
# A llama.cpp session file where the cache should be: kvstash import converts it; kept as it was.
printf 'nsgg\x09\x00\x00\x00junk' >"$dir/llama.bin"
cp "$dir/llama.bin" "$dir/llama.copy"
expect_exit 1 "kvstash import" -- $KV run -m "$M" -p "$Q" --prompt-cache "$dir/llama.bin"
check "cmp -s '$dir/llama.bin' '$dir/llama.copy'" "a llama.cpp session file was replaced"
expect_exit 2 "" -- $KV run -m "$M" -p "$Q" --prompt-cache "$PC" --session "$dir/q8.kvs"

# --- A full prompt after --session: the session's tokens are reused, only the question decoded.
printf '%s' "$SYS" >"$dir/sys.txt"
printf '%s%s\n' "$SYS" "$Q" >"$dir/full.txt"
expect_exit 0 "" -- $KV save -m "$M" --prefix-file "$dir/sys.txt" -o "$dir/sys.kvs"
expect_exit 0 "" -- $KV run -m "$M" --session "$dir/sys.kvs" -f "$dir/full.txt" -n 4 --temp 0 --json
cp "$dir/out" "$dir/fullp.json"
$KV inspect "$dir/sys.kvs" --json >"$dir/sys.json"
n_sys=$(jq_ "$dir/sys.json" 'd["n_tokens"]')
check "python3 -c \"import json;d=json.load(open('$dir/fullp.json'));assert d['n_reused_tokens']==$n_sys and d['n_decoded_prompt_tokens']==d['n_prompt_tokens']-$n_sys, d\"" "full prompt after --session decoded the system prompt again"
expect_exit 0 "session's $n_sys tokens" -- $KV run -m "$M" --session "$dir/sys.kvs" -f "$dir/full.txt" -n 4 --temp 0

# --- One summary line on stderr in plain mode, none with --json.
expect_exit 0 "^kvstash: reused $n_sys of [0-9]* prompt tokens (session), decoded [0-9]* in .* ms (.* t/s); load .* ms; generated 4 tokens in .* ms (.* t/s)$" -- \
  $KV run -m "$M" --session "$dir/sys.kvs" -p "$Q" -n 4 --temp 0
expect_exit 0 "" -- $KV run -m "$M" --session "$dir/sys.kvs" -p "$Q" -n 4 --temp 0 --json
check "! grep -q '^kvstash:' '$dir/err'" "--json printed the summary line"
expect_exit 0 "^kvstash: reused 0 of [0-9]* prompt tokens, decoded" -- $KV run -m "$M" -p "$Q" -n 2 --temp 0

echo "llama_flags_test: $pass passed, $fail failed"
[ $fail -eq 0 ]
