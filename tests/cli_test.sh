#!/usr/bin/env bash
# Drives the kvstash binary: save -> run warm vs cold, re-passed prefix, inspect/verify, and every
# error path's exit code and message. Usage: cli_test.sh path/to/kvstash
set -u
KV=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
. "$(dirname "$0")/test_lib.sh"

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
check "grep -q '^memory *kv: KV cells [0-9]* (positions 0[.][.]' '$dir/out' && grep -q '^reuse *any prefix' '$dir/out'" "inspect text of a plain session's memory"
expect_exit 0 "" -- $KV inspect "$dir/s.kvs" --json
check "python3 -c \"import json;d=json.load(open('$dir/out'));assert d['n_tokens']>10 and d['checksums']=='ok' and d['context']['cache_type_k']=='f16' and len(d['model']['fingerprint'])==32\"" "inspect --json"
check "python3 -c \"import json;m=json.load(open('$dir/out'))['memory'];assert m['kind']=='kv' and 'n_swa' not in m and 'recurrent' not in m and m['reuse'].startswith('any prefix'), m\"" "inspect --json of a plain session's memory"
# Each other memory kind: an iSWA window (gemma2's 64 tokens; the prompt is longer, so the window
# holds its last 64 positions), a recurrent state (mamba2), and a hybrid (lfm2: attention KV and a
# state whose S rows have 0 bytes).
LONG=$(printf 'word%d ' $(seq 40))
for arch in gemma2 mamba2 lfm2; do
  $KV make-test-model --arch $arch -o "$dir/$arch.gguf" >/dev/null
  expect_exit 0 "" -- $KV save -m "$dir/$arch.gguf" --prefix "$LONG" -o "$dir/$arch.kvs"
  expect_exit 0 "" -- $KV inspect "$dir/$arch.kvs"
  cp "$dir/out" "$dir/$arch.txt"
  expect_exit 0 "" -- $KV inspect "$dir/$arch.kvs" --json
  cp "$dir/out" "$dir/$arch.json"
done
check "grep -q '^memory *iswa, window of 64 tokens: KV cells [0-9]* (positions 0[.][.][0-9]*, .*), window cells 64 (positions [0-9]*[.][.][0-9]*, ' '$dir/gemma2.txt' && grep -q '^reuse .*64-token window' '$dir/gemma2.txt'" "inspect text of an iSWA session"
check "python3 -c \"import json;d=json.load(open('$dir/gemma2.json'));m=d['memory'];n=d['n_tokens'];assert n>64 and m['kind']=='iswa' and m['n_swa']==64 and m['kv']['cells']==n and m['window']=={**m['window'],'cells':64,'first_pos':n-64} and 'recurrent' not in m, m\"" "inspect --json of an iSWA session"
check "grep -q '^memory *recurrent: recurrent state .* (2 layers with a state: R rows of .*, S rows of ' '$dir/mamba2.txt' && grep -q '^reuse .*snapshot' '$dir/mamba2.txt'" "inspect text of a recurrent session"
check "python3 -c \"import json;d=json.load(open('$dir/mamba2.json'));m=d['memory'];r=m['recurrent'];assert m['kind']=='recurrent' and 'kv' not in m and 'n_swa' not in m and r['pos']==d['n_tokens']-1 and r['r_records']==r['s_records']==2 and r['s_row_bytes']>0 and r['bytes']+8==d['kv_bytes'], m\"" "inspect --json of a recurrent session"
check "grep -q '^memory *hybrid: KV cells [0-9]* (positions 0.*), recurrent state .*S rows of 0 bytes)' '$dir/lfm2.txt'" "inspect text of a hybrid session"
check "python3 -c \"import json;d=json.load(open('$dir/lfm2.json'));m=d['memory'];r=m['recurrent'];assert m['kind']=='hybrid' and m['kv']['cells']==d['n_tokens'] and r['s_row_bytes']==0 and m['kv']['bytes']+r['bytes']+8==d['kv_bytes'], m\"" "inspect --json of a hybrid session"
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
expect_exit 1 "at most 16777216 tokens" -- $KV run -m "$M" -p x -c 999999999
# The memory check: 2^24 tokens of a SmolLM2-shaped model's f32 cache is 720 GiB.
$KV make-test-model -o "$dir/small.gguf" --shape small --type q8_0 >/dev/null
expect_exit 1 "GiB of KV cache, more than this machine's" -- $KV run -m "$dir/small.gguf" -p x -c 16777216 --cache-type-k f32 --cache-type-v f32
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

# --- Outputs never replace inputs; links and special files; non-session files need --force.
cp "$M" "$dir/model.copy"
ln -s "$M" "$dir/model-link.gguf"
ln "$M" "$dir/model-hard.gguf"
for out in "$M" "$dir/model-link.gguf" "$dir/model-hard.gguf"; do
  expect_exit 1 "is the model" -- $KV save -m "$M" --prefix x -o "$out" --force
  check "cmp -s '$M' '$dir/model.copy'" "save -o $out replaced the model"
done
printf '%s' "$PREFIX" >"$dir/prefix.txt"
cp "$dir/prefix.txt" "$dir/prefix.copy"
ln "$dir/prefix.txt" "$dir/prefix-hard.txt"
ln -s prefix.txt "$dir/prefix-link.txt"
for out in "$dir/prefix.txt" "$dir/prefix-hard.txt" "$dir/prefix-link.txt"; do
  expect_exit 1 "is the prefix file" -- $KV save -m "$M" --prefix-file "$dir/prefix.txt" -o "$out" --force
  check "cmp -s '$dir/prefix.txt' '$dir/prefix.copy'" "save -o $out replaced the prefix file"
done
printf 'my notes' >"$dir/notes.txt"
expect_exit 1 "'$dir/notes.txt' exists and is not a kvstash session file" -- $KV save -m "$M" --prefix x -o "$dir/notes.txt"
check "[ \"\$(cat '$dir/notes.txt')\" = 'my notes' ]" "a non-session file was replaced without --force"
expect_exit 0 "" -- $KV save -m "$M" --prefix x -o "$dir/notes.txt" --force
expect_exit 0 "" -- $KV inspect "$dir/notes.txt"
cp "$dir/s.kvs" "$dir/target.kvs"
ln -s target.kvs "$dir/link.kvs"
expect_exit 0 "" -- $KV save -m "$M" --prefix "Another prefix." -o "$dir/link.kvs"
check "[ -L '$dir/link.kvs' ] && ! cmp -s '$dir/target.kvs' '$dir/s.kvs'" "save through a symlink replaced the link"
ln -s nowhere.kvs "$dir/dangling.kvs"
expect_exit 0 "" -- $KV save -m "$M" --prefix x -o "$dir/dangling.kvs"
check "[ -L '$dir/dangling.kvs' ] && [ -f '$dir/nowhere.kvs' ]" "dangling link: target not created"
ln -s /dev/null "$dir/null.kvs"
expect_exit 1 "not a regular file" -- $KV save -m "$M" --prefix x -o "$dir/null.kvs" --force
check "[ -c /dev/null ]" "/dev/null was replaced"
$KV save -m "$M" --prefix x -o /dev/stdout --force 2>"$dir/err" | cat >/dev/null
rc=${PIPESTATUS[0]}
check "[ $rc -eq 1 ] && grep -q 'not a regular file' '$dir/err'" "save -o /dev/stdout on a pipe: exit $rc"
expect_exit 2 "" -- $KV save -m "$M" --prefix x -o ""
check "! ls '$dir' | grep -q kvstash-" "temp or backup files left in $dir"
# A temp file whose writer holds its flock survives another save's cleanup, whatever the PID in
# its name says (a writer in another PID namespace or on another host); an unlocked one goes.
live="$dir/s.kvs.kvstash-tmp.999999.0.0badf00d"
python3 -c "import fcntl,sys,time; f=open(sys.argv[1],'a'); fcntl.flock(f, fcntl.LOCK_EX); time.sleep(60)" "$live" &
locker=$!
for _ in $(seq 1 100); do [ -e "$live" ] && ! flock -n "$live" true && break; sleep 0.05; done
printf 'stale' >"$dir/s.kvs.kvstash-tmp.999998.0.0badf00d"
expect_exit 0 "" -- $KV save -m "$M" --prefix "$PREFIX" -o "$dir/s.kvs"
check "[ -e '$live' ] && [ ! -e '$dir/s.kvs.kvstash-tmp.999998.0.0badf00d' ]" "a live writer's temp was removed, or a stale one kept"
kill $locker
wait $locker 2>/dev/null
expect_exit 0 "" -- $KV save -m "$M" --prefix "$PREFIX" -o "$dir/s.kvs"
check "[ ! -e '$live' ]" "a temp file whose writer is gone was kept"

# --- Signals: SIGINT during run prints what was generated; SIGTERM during save keeps the old file.
# run_and_signal SIGNAL WHEN OUT -- command...: starts it, signals it, returns its exit code. WHEN:
# first-output, handler (once it catches SIGNAL), handler:N (N seconds after that) or seconds.
run_and_signal() {
  local sig=$1 delay=$2 out=$3; shift 4
  env --default-signal=INT,TERM "$@" >"$out" 2>"$dir/sigerr" &
  local pid=$!
  if [ "$delay" = first-output ]; then
    for _ in $(seq 1 200); do [ -s "$out" ] && break; sleep 0.05; done
  elif [ "${delay%%:*}" = handler ]; then  # until it catches the signal (SigCgt), then :N s more
    local bit=$(($(kill -l "$sig") - 1))
    for _ in $(seq 1 200); do
      local caught=$(awk '/^SigCgt:/ {print $2}' "/proc/$pid/status" 2>/dev/null)
      [ -n "$caught" ] && [ $(((0x$caught >> bit) & 1)) -eq 1 ] && break
      sleep 0.02
    done
    [ "$delay" = handler ] || sleep "${delay#handler:}"
  else
    sleep "$delay"
  fi
  kill -s "$sig" $pid
  wait $pid
}
run_and_signal INT first-output "$dir/int.txt" -- $KV run -m "$M" -p "$Q" -n 1000000 -c 60000 --temp 1 -s 3 --top-k 0 --top-p 1 --min-p 0
rc=$?
check "[ $rc -eq 130 ] && [ -s '$dir/int.txt' ] && [ \"\$(tail -c 1 '$dir/int.txt' | od -An -c | tr -d ' ')\" = '\n' ]" "SIGINT during run: exit $rc, want 130 and text ending in a newline"
run_and_signal INT handler:1 "$dir/int.json" -- $KV run -m "$M" -p "$Q" -n 1000000 -c 60000 --temp 1 -s 3 --top-k 0 --top-p 1 --min-p 0 --json
rc=$?
# (The signal may land in the prompt's prefill, which it stops too: then no token was generated.)
check "[ $rc -eq 130 ] && python3 -c \"import json;d=json.load(open('$dir/int.json'));assert d['stop_reason']=='cancelled', d['stop_reason']\"" "SIGINT during run --json: exit $rc, want 130 and stop_reason cancelled"
seq 1 3000 | tr '\n' ' ' >"$dir/long.txt"  # ~14k tokens: a prefill of seconds
cp "$dir/s.kvs" "$dir/keep.kvs"
cp "$dir/s.kvs" "$dir/keep.copy"
run_and_signal TERM handler "$dir/term.out" -- $KV save -m "$M" --prefix-file "$dir/long.txt" -c 16384 -o "$dir/keep.kvs"
rc=$?
check "[ $rc -eq 143 ] && grep -q 'cancelled' '$dir/sigerr'" "SIGTERM during save: exit $rc, want 143 and a 'cancelled' error line"
check "cmp -s '$dir/keep.kvs' '$dir/keep.copy' && ! ls '$dir' | grep -q kvstash-tmp" "SIGTERM during save: old file changed or temp left"

# --- Write errors on stdout are errors.
for args in "run -m $M -p x -n 2 --temp 0" "run -m $M -p x -n 2 --temp 0 --json" "inspect $dir/s.kvs" \
  "inspect $dir/s.kvs --json" "verify -m $M $dir/s.kvs" "verify -m $M $dir/s.kvs --json" \
  "save -m $M --prefix x -o $dir/full.kvs --json" "--version" "run --help"; do
  $KV $args >/dev/full 2>"$dir/err"; rc=$?
  check "[ $rc -eq 1 ] && grep -q 'error: cannot write to standard output' '$dir/err'" "stdout write error: $args exits $rc"
done

# A closed stdout is an error only for a command that writes to it.
$KV save -m "$M" --prefix x -o "$dir/closed.kvs" >&- 2>/dev/null
rc=$?
check "[ $rc -eq 0 ]" "save with stdout closed (it writes nothing there) exits $rc"
$KV inspect "$dir/closed.kvs" >&- 2>/dev/null
rc=$?
check "[ $rc -eq 1 ]" "inspect with stdout closed exits $rc"

# --- With --json every error is one JSON object on stdout.
json_error() {  # EXIT CODE -- command...
  local code=$1 err=$2; shift 3
  "$@" >"$dir/out" 2>"$dir/err"; local rc=$?
  check "[ $rc -eq $code ] && grep -q '^error: ' '$dir/err' && python3 -c \"import json;d=json.load(open('$dir/out'));e=d['error'];assert e['code']=='$err' and e['message'], d\"" "--json error ($rc, want $code/$err): $*"
}
json_error 1 not_found -- $KV verify -m "$dir/nope.gguf" "$dir/s.kvs" --json
json_error 1 corruption -- $KV verify -m "$M" "$dir/cut.kvs" --json
json_error 1 not_found -- $KV run -m "$M" --session "$dir/missing.kvs" -p x --json
json_error 1 io_error -- $KV save -m "$M" --prefix x -o "$dir/no/such/x.kvs" --json
json_error 1 corruption -- $KV inspect "$dir/cut.kvs" --json
json_error 2 usage -- $KV run -m "$M" --json
json_error 2 usage -- $KV run -m "$M" -p x -n notanumber --json
json_error 2 usage -- $KV save -m "$M" --prefix x -o "" --json

# --- Flag values and limits.
# -fa / -ub are renamed only where they are flags, never as the value of another option.
expect_exit 0 "" -- $KV save -m "$M" --prefix -fa -o "$dir/fa.kvs" -fa off
$KV inspect "$dir/fa.kvs" --json >"$dir/fa.json"
check "python3 -c \"import json;d=json.load(open('$dir/fa.json'));assert d['preview'].strip()=='-fa' and d['context']['flash_attn'] is False, d['preview']\"" "--prefix -fa was rewritten"
expect_exit 0 "" -- $KV save -m "$M" --prefix -ub -o "$dir/ub.kvs" -ub 256
$KV inspect "$dir/ub.kvs" --json >"$dir/ub.json"
check "python3 -c \"import json;d=json.load(open('$dir/ub.json'));assert d['preview'].strip()=='-ub' and d['context']['n_ubatch']==256, d\"" "--prefix -ub was rewritten"
expect_exit 2 "4294967295" -- $KV run -m "$M" -p x -s 4294967295
expect_exit 1 "at most 16777216 tokens" -- $KV save -m "$M" --prefix x -o "$dir/x.kvs" -c 16777217
check "! grep -q 'this machine' '$dir/err'" "-c 16777217 blames the machine's memory"
expect_exit 0 "" -- $KV save -m "$M" --prefix x -o "$dir/small.kvs" -c 16
check "grep -q 'note: .*16.*256' '$dir/err'" "-c 16 became a larger context silently"
truncate -s 70G "$dir/huge.kvs"
expect_exit 1 "larger than any kvstash session" -- $KV inspect "$dir/huge.kvs"
check "! grep -q 'model' '$dir/err'" "inspect of a huge file talks about a model"
rm -f "$dir/huge.kvs"
head -c 20000000 /dev/urandom | base64 -w 100 >"$dir/big.txt"
start=$(date +%s%N)
expect_exit 1 "use a larger -c" -- $KV save -m "$M" --prefix-file "$dir/big.txt" -o "$dir/big.kvs"
ms=$((($(date +%s%N) - start) / 1000000))
check "[ $ms -lt 4000 ]" "a 27 MB prefix took $ms ms to be refused (tokenized first?)"
head -c 300000 "$M" >"$dir/cut.gguf"
expect_exit 1 "cannot load model '$dir/cut.gguf' (llama.cpp: " -- $KV run -m "$dir/cut.gguf" -p x

echo "cli_test: $pass passed, $fail failed"
[ $fail -eq 0 ]
