#!/usr/bin/env bash
# Drives the prefix store through the kvstash binary: warm == cold (greedy and seeded, prompts
# ending inside, on and before a chunk boundary, diverging inside a cached chunk), concurrent
# runs against a looping gc, SIGKILLed writers, hostile chunk files, a full disk and a read-only
# store, and the 'cache' commands' surface. Usage: store_cli_test.sh path/to/kvstash
set -u
KV=$1
dir=$(mktemp -d)
mounted=()
bg_pids=()
cleanup() {
  local p m
  for p in "${bg_pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  for m in "${mounted[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
  rm -rf "$dir"
}
trap cleanup EXIT
unset KVSTASH_CACHE_DIR
. "$(dirname "$0")/test_lib.sh"
t_section=$SECONDS
section() { echo "  [section before $1: $((SECONDS - t_section)) s]"; t_section=$SECONDS; }
# jf FILE KEY: one field of a JSON object
jf() { python3 -c "import json,sys;print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2" 2>/dev/null; }
# same_answer A B: the two run --json outputs have the same text and tokens
same_answer() {
  python3 -c "
import json,sys
a=json.load(open(sys.argv[1]));b=json.load(open(sys.argv[2]))
sys.exit(0 if a['text']==b['text'] and a['tokens']==b['tokens'] and len(a['tokens'])>0 else 1)" "$1" "$2" 2>/dev/null
}
# krun OUT ARGS...: kvstash run --json into OUT (stderr into OUT.err); returns its exit code
krun() { local out=$1; shift; $KV run --json "$@" >"$out" 2>"$out.err"; }

M="$dir/tiny.gguf"
$KV make-test-model -o "$M" >/dev/null 2>&1 || { echo "cannot make model"; exit 1; }
GREEDY=(-n 16 --temp 0)
SEEDED=(-n 16 --temp 0.8 -s 42)
PREFIX="You are a terse assistant. Answer each question in a few words. Example: Q: 2+2? A: 4. Example: Q: capital of France? A: Paris."
C=16

section 1; # --- 1. Warm == cold, through the CLI.
# n_tokens ARGS...: the prompt's token count (a cold run)
n_tokens() { krun "$dir/nt.json" -m "$M" --no-cache -n 1 --temp 0 "$@" && jf "$dir/nt.json" n_prompt_tokens; }
# A prompt that ends exactly on a chunk boundary, and one that ends inside a chunk.
Q_ON="" Q_IN=""
q=" Q: What colour is the sky?"
for i in $(seq 1 24); do
  n=$(n_tokens --prefix "$PREFIX" -p "$q A:")
  if [ -n "$n" ] && [ $((n % C)) -eq 0 ] && [ -z "$Q_ON" ]; then Q_ON="$q A:"; fi
  if [ -n "$n" ] && [ $((n % C)) -gt 2 ] && [ -z "$Q_IN" ] && [ "$n" -gt $((2 * C)) ]; then Q_IN="$q A:"; fi
  [ -n "$Q_ON" ] && [ -n "$Q_IN" ] && break
  q="$q very"
done
check "[ -n '$Q_ON' ] && [ -n '$Q_IN' ]" "no prompt found that ends on (or inside) a $C-token chunk"
# Diverges from Q_IN inside the prefix's cached chunks (the prefix is shared up to 'Example').
PREFIX_DIV="You are a terse assistant. Answer each question in a few words. Example: Q: 3+3? A: 6. Example: Q: capital of Spain? A: Madrid."
# case NAME: the args after -m (prefix and prompt)
declare -A CASE
CASE[inside]="--prefix|$PREFIX|-p|$Q_IN"
CASE[boundary]="--prefix|$PREFIX|-p|$Q_ON"
CASE[short]="-p|Hi there"
CASE[diverge]="--prefix|$PREFIX_DIV|-p|$Q_IN"
warm="$dir/warm1"  # one store for every case, in this order: 'diverge' finds the others' chunks
for mode in greedy seeded; do
  if [ $mode = greedy ]; then S=("${GREEDY[@]}"); else S=("${SEEDED[@]}"); fi
  rm -rf "$warm"
  for name in inside boundary short diverge; do
    IFS='|' read -r -a A <<<"${CASE[$name]}"
    t="$dir/c1.$mode.$name"
    krun "$t.cold" -m "$M" --no-cache "${A[@]}" "${S[@]}"; rc1=$?
    rm -rf "$dir/empty"
    krun "$t.empty" -m "$M" --cache-dir "$dir/empty" --cache-chunk $C "${A[@]}" "${S[@]}"; rc2=$?
    krun "$t.first" -m "$M" --cache-dir "$warm" --cache-chunk $C "${A[@]}" "${S[@]}"; rc3=$?
    krun "$t.again" -m "$M" --cache-dir "$warm" "${A[@]}" "${S[@]}"; rc4=$?
    check "[ $rc1$rc2$rc3$rc4 = 0000 ]" "$mode/$name: exit codes $rc1 $rc2 $rc3 $rc4"
    check "same_answer '$t.cold' '$t.empty'" "$mode/$name: --no-cache and empty-store answers differ"
    check "same_answer '$t.empty' '$t.first'" "$mode/$name: empty store and shared store (first run) differ"
    check "same_answer '$t.empty' '$t.again'" "$mode/$name: warm (repeat) and empty-store answers differ"
    n=$(jf "$t.again" n_prompt_tokens)
    r_empty=$(jf "$t.empty" n_reused_tokens) r_again=$(jf "$t.again" n_reused_tokens)
    d_again=$(jf "$t.again" n_decoded_prompt_tokens)
    want=$(((n - 1) / C * C))  # every whole chunk but the one holding the last token
    check "[ '$r_empty' = 0 ] && [ '$r_again' = $want ] && [ $((r_again + d_again)) -eq $n ]" \
      "$mode/$name: n=$n reused (empty store) $r_empty, reused (repeat) $r_again decoded $d_again, want $want"
    if [ $name = diverge ]; then
      r_first=$(jf "$t.first" n_reused_tokens)
      check "[ $((r_first % C)) -eq 0 ] && [ $r_first -gt 0 ] && [ $r_first -lt $want ]" \
        "$mode/diverge: first run reused $r_first (want a multiple of $C, > 0, < $want)"
    fi
    if [ $name = short ]; then check "[ $n -lt $C ]" "short prompt has $n tokens"; fi
    if [ $name = boundary ]; then check "[ $((n % C)) -eq 0 ]" "boundary prompt has $n tokens"; fi
  done
done
expect_exit 0 "" -- $KV cache verify --cache-dir "$warm"

section 1b; # --- 1b. Token-exact lookups: with -fa off (a batch-invariant session), a new process
# restores what it shares with an earlier prompt to the token (the earlier prompt's tail), as
# llama-completion's --prompt-cache reuses its file's common prefix; with flash attention on,
# whole chunks only.
E=(--prefix "$PREFIX" -p " Q: What colour is the sea? A:")
for q in sky sea; do
  krun "$dir/c1b.pc.$q" -m "$M" -fa off --prompt-cache "$dir/c1b.bin" --prefix "$PREFIX" -p " Q: What colour is the $q? A:" "${GREEDY[@]}"
  krun "$dir/c1b.st.$q" -m "$M" -fa off --cache-dir "$dir/c1b.store" --cache-chunk $C --prefix "$PREFIX" -p " Q: What colour is the $q? A:" "${GREEDY[@]}"
done
krun "$dir/c1b.cold" -m "$M" -fa off --no-cache "${E[@]}" "${GREEDY[@]}"
ref=$(jf "$dir/c1b.pc.sea" n_reused_tokens) got=$(jf "$dir/c1b.st.sea" n_reused_tokens)
check "[ -n '$ref' ] && [ $((ref % C)) -ne 0 ] && [ '$got' = '$ref' ] && same_answer '$dir/c1b.st.sea' '$dir/c1b.cold'" \
  "-fa off: a new process reused $got tokens through the store, --prompt-cache $ref (want equal, not a multiple of $C), or the answer differs: $(tail -2 "$dir/c1b.st.sea.err")"
check "[ \$(find '$dir/c1b.store/tails' -name '*.kvt' | wc -l) -ge 1 ]" "-fa off: no tail file was written"
krun "$dir/c1b.fa.sky" -m "$M" -fa on --cache-dir "$dir/c1b.fa" --cache-chunk $C --prefix "$PREFIX" -p " Q: What colour is the sky? A:" "${GREEDY[@]}"
krun "$dir/c1b.fa.sea" -m "$M" -fa on --cache-dir "$dir/c1b.fa" "${E[@]}" "${GREEDY[@]}"
got=$(jf "$dir/c1b.fa.sea" n_reused_tokens)
check "[ '$got' = $((ref / C * C)) ]" "-fa on: reused $got tokens, want whole chunks only ($((ref / C * C)))"
expect_exit 0 "" -- $KV cache verify --cache-dir "$dir/c1b.store"

section 2; # --- 2. Four processes on one store while gc loops with a small budget.
S2="$dir/conc"
QS=(" Q: What colour is grass? A:" " Q: How many legs has a cat? A:" " Q: Is water wet? A:" " Q: Name a prime number. A:")
for i in 0 1 2 3; do krun "$dir/c2.cold.$i" -m "$M" --no-cache --prefix "$PREFIX" -p "${QS[$i]}" "${GREEDY[@]}"; done
krun "$dir/c2.seed" -m "$M" --cache-dir "$S2" --cache-chunk $C --prefix "$PREFIX" -p "${QS[0]}" "${GREEDY[@]}"
chunk_bytes=$($KV cache stats --cache-dir "$S2" --json | python3 -c "import json,sys;d=json.load(sys.stdin);print(d['bytes']//max(d['chunks'],1))")
small=$((chunk_bytes * 3))
: >"$dir/c2.fail"
end=$((SECONDS + 25))
( while [ $SECONDS -lt $end ]; do
    $KV cache gc --cache-dir "$S2" --max-bytes $small >/dev/null 2>"$dir/c2.gcerr" || echo "gc exit $?: $(cat "$dir/c2.gcerr")" >>"$dir/c2.fail"
  done ) &
gcpid=$!
bg_pids+=($gcpid)
workers=()
for i in 0 1 2 3; do
  ( k=0
    while [ $SECONDS -lt $end ]; do
      k=$((k + 1))
      krun "$dir/c2.w$i" -m "$M" --cache-dir "$S2" --prefix "$PREFIX" -p "${QS[$i]}" "${GREEDY[@]}"; rc=$?
      [ $rc -eq 0 ] || echo "worker $i run $k: exit $rc: $(cat "$dir/c2.w$i.err")" >>"$dir/c2.fail"
      same_answer "$dir/c2.w$i" "$dir/c2.cold.$i" || echo "worker $i run $k: answer differs from cold" >>"$dir/c2.fail"
    done
    echo $k >"$dir/c2.count.$i" ) &
  workers+=($!)
  bg_pids+=($!)
done
wait "${workers[@]}"
wait $gcpid
check "[ ! -s '$dir/c2.fail' ]" "concurrent runs with gc: $(head -5 "$dir/c2.fail")"
echo "concurrent: $(cat "$dir"/c2.count.* | awk '{s+=$1} END {print s}') runs"
expect_exit 0 "" -- $KV cache verify --cache-dir "$S2"

section 3; # --- 3. SIGKILLed writers: killed while a chunk is being written (once a temp file shows up in
# tmp/, after a random 0-99 ms more) or at a random point of the prefill.
S3="$dir/kill"
LONG="$(seq 1 150 | tr '\n' ' ')"  # ~580 tokens: 36 chunks of 16
A3=(-p " Q: next? A:" "${GREEDY[@]}")
krun "$dir/c3.cold" -m "$M" --cache-dir "$dir/kill.empty" --cache-chunk $C --prefix "$LONG" "${A3[@]}"
killed_writing=0
for i in $(seq 1 10); do
  # A new prefix each time, so that every run has chunks to write.
  $KV run -m "$M" --cache-dir "$S3" --cache-chunk $C --prefix "$i $LONG" -p " Q: next? A:" -n 4 --temp 0 >/dev/null 2>&1 &
  pid=$!
  if [ $((i % 3)) -eq 0 ]; then
    sleep "0.$((RANDOM % 10))$((RANDOM % 10))"
  else
    for _ in $(seq 1 1500); do
      [ -n "$(ls -A "$S3/tmp" 2>/dev/null)" ] && { killed_writing=$((killed_writing + 1)); break; }
      kill -0 $pid 2>/dev/null || break
      sleep 0.01
    done
    sleep "0.0$((RANDOM % 10))"
  fi
  kill -9 $pid 2>/dev/null
  wait $pid 2>/dev/null
done
echo "kills: $killed_writing of 10 while a temp file was there; left $(ls "$S3/tmp" 2>/dev/null | wc -l) temp files, $(find "$S3/chunks" -name '*.kvc' 2>/dev/null | wc -l) chunks"
check "[ $killed_writing -ge 3 ]" "only $killed_writing kills landed while a chunk was written"
expect_exit 0 "" -- $KV cache verify --cache-dir "$S3"
expect_exit 0 "" -- $KV cache gc --cache-dir "$S3" --max-bytes 1G
check "[ -d '$S3/tmp' ] && [ -z \"\$(ls -A '$S3/tmp')\" ]" "gc left temp files: $(ls -A "$S3/tmp" 2>/dev/null | head -3)"
krun "$dir/c3.warm" -m "$M" --cache-dir "$S3" --prefix "$LONG" "${A3[@]}"
check "[ $? -eq 0 ] && same_answer '$dir/c3.warm' '$dir/c3.cold'" "after kills: answer differs from the empty store's"
# (~500 tokens: --no-cache agrees too. On much longer prompts with C=16 it need not: the store
# decodes in C-token groups, --no-cache in n_ubatch ones, and the split changes the numbers.)
krun "$dir/c3.nocache" -m "$M" --no-cache --prefix "$LONG" "${A3[@]}"
check "same_answer '$dir/c3.warm' '$dir/c3.nocache'" "after kills: answer differs from --no-cache"
krun "$dir/c3.warm2" -m "$M" --cache-dir "$S3" --prefix "3 $LONG" "${A3[@]}"; rc=$?
krun "$dir/c3.cold2" -m "$M" --cache-dir "$dir/kill.empty2" --cache-chunk $C --prefix "3 $LONG" "${A3[@]}"
check "[ $rc -eq 0 ] && same_answer '$dir/c3.warm2' '$dir/c3.cold2'" "after kills: a killed run's prompt differs from the empty store's"

section 4; # --- 4. Hostile chunk files: misses, never loaded, never a crash; verify names them.
S4="$dir/hostile"
A4=(--prefix "$PREFIX" -p "$Q_IN")
krun "$dir/c4.cold" -m "$M" --no-cache "${A4[@]}" "${GREEDY[@]}"
krun "$dir/c4.pop" -m "$M" --cache-dir "$S4.orig" --cache-chunk $C "${A4[@]}" "${GREEDY[@]}"
# chunk_path STORE INDEX: the path of chunk INDEX (the store holds one prompt's chain)
chunk_path() { find "$1/chunks" -name "*.$2.kvc" | head -1; }
n4=$(jf "$dir/c4.pop" n_prompt_tokens)
check "[ $((n4 / C)) -ge 3 ]" "hostile: the prompt has only $n4 tokens"
$KV make-test-model -o "$dir/other.gguf" --seed 9 >/dev/null 2>&1
krun "$dir/c4.other" -m "$dir/other.gguf" --cache-dir "$dir/other.store" --cache-chunk $C "${A4[@]}" "${GREEDY[@]}"
# tamper NAME: damage chunk #2 of a fresh copy of the store
tamper() {
  local f=$1 c1 c2
  c1=$(chunk_path "$S4" 1) c2=$(chunk_path "$S4" 2)
  case $f in
    truncated) truncate -s $(($(stat -c %s "$c2") / 2)) "$c2" ;;
    flipped) python3 -c "import sys;p=sys.argv[1];b=bytearray(open(p,'rb').read());b[-7]^=0x40;open(p,'wb').write(b)" "$c2" ;;
    misnamed) cp "$c1" "$c2" ;;
    header_byte) python3 -c "import sys;p=sys.argv[1];b=bytearray(open(p,'rb').read());b[60]^=1;open(p,'wb').write(b)" "$c2" ;;
    parent) "$dir/forge_parent" "$c2" ;;
    other_model) cp "$(chunk_path "$dir/other.store" 2)" "$c2" ;;
    missing) rm "$c2" ;;
    directory) rm "$c2" && mkdir "$c2" ;;
    fifo) rm "$c2" && mkfifo "$c2" ;;
    symlink) cp "$c2" "$dir/c2.copy" && rm "$c2" && ln -s "$dir/c2.copy" "$c2" ;;
  esac
}
kinds="truncated flipped misnamed header_byte other_model missing directory fifo symlink"
# Parent mismatch: another parent in a header whose checksum is recomputed (XXH3-64 of bytes
# 0..247, stored at 248), so that only the chain check can refuse it. Needs a C compiler.
xxh_dir="$(cd "$(dirname "$0")/.." && pwd)/third_party/llama.cpp/vendor/hash/xxhash"
cat >"$dir/forge_parent.c" <<'EOF'
#define XXH_INLINE_ALL
#include <stdio.h>
#include <stdint.h>
#include "xxhash.h"
int main(int argc, char** argv) {
  unsigned char h[256];
  FILE* f = argc == 2 ? fopen(argv[1], "r+b") : NULL;
  if (f == NULL || fread(h, 1, 256, f) != 256) return 1;
  h[48] ^= 1; /* the parent hash */
  uint64_t sum = XXH3_64bits(h, 248);
  for (int i = 0; i < 8; ++i) h[248 + i] = (unsigned char)(sum >> (8 * i));
  rewind(f);
  return fwrite(h, 1, 256, f) == 256 && fclose(f) == 0 ? 0 : 1;
}
EOF
if cc -O1 -I"$xxh_dir" -o "$dir/forge_parent" "$dir/forge_parent.c" 2>"$dir/cc.err"; then
  kinds="$kinds parent"
else
  echo "SKIP parent-mismatch chunk: cannot build the header forger: $(head -1 "$dir/cc.err")"
fi
for kind in $kinds; do
  rm -rf "$S4" && cp -a "$S4.orig" "$S4"
  tamper $kind
  bad_path=$(chunk_path "$S4" 2)
  [ -n "$bad_path" ] || bad_path="$(dirname "$(chunk_path "$S4" 1)")"
  timeout 60 $KV cache verify --cache-dir "$S4" >"$dir/c4.verify" 2>&1; rc=$?
  if [ $kind = missing ]; then
    check "[ $rc -eq 0 ]" "hostile/missing: verify exit $rc"
  else
    check "[ $rc -eq 1 ] && grep -q \"^bad: .*\$(basename '$bad_path')\" '$dir/c4.verify'" "hostile/$kind: verify exit $rc (want 1, listing chunk #2): $(head -3 "$dir/c4.verify")"
  fi
  if [ $kind = parent ]; then
    check "grep -q 'hash of its parent' '$dir/c4.verify'" "hostile/parent: refused for another reason: $(head -1 "$dir/c4.verify")"
  fi
  timeout 60 $KV run --json -m "$M" --cache-dir "$S4" "${A4[@]}" "${GREEDY[@]}" >"$dir/c4.$kind" 2>"$dir/c4.$kind.err"; rc=$?
  check "[ $rc -eq 0 ] && same_answer '$dir/c4.$kind' '$dir/c4.cold'" "hostile/$kind: run exit $rc or answer differs from cold: $(head -3 "$dir/c4.$kind.err")"
  reused=$(jf "$dir/c4.$kind" n_reused_tokens)
  check "[ '$reused' = $C ]" "hostile/$kind: reused $reused tokens, want $C (chunk #1 only)"
  if [ $kind = missing ]; then
    check "[ -n \"\$(chunk_path '$S4' 2)\" ]" "hostile/missing: chunk #2 was not republished"
    expect_exit 0 "" -- $KV cache verify --cache-dir "$S4"
  fi
  # A second run: still the cold answer (whatever the first run replaced or left).
  timeout 60 $KV run --json -m "$M" --cache-dir "$S4" "${A4[@]}" "${GREEDY[@]}" >"$dir/c4.$kind.2" 2>"$dir/c4.$kind.2.err"; rc=$?
  check "[ $rc -eq 0 ] && same_answer '$dir/c4.$kind.2' '$dir/c4.cold'" "hostile/$kind: second run exit $rc or answer differs"
done

section 5; # --- 5. Full disk and read-only store (root only: a small tmpfs).
if [ "$(id -u)" -ne 0 ]; then
  echo "SKIP full-disk test: needs root to mount a tmpfs"
  echo "SKIP read-only test: needs root to mount a tmpfs"
elif ! { mkdir -p "$dir/full" && mount -t tmpfs -o size=300k tmpfs "$dir/full"; }; then
  echo "SKIP full-disk test: cannot mount a tmpfs here"
else
  mounted+=("$dir/full")
  S5="$dir/full/store"
  # An empty store (manifest and dirs), then fill the rest of the disk.
  krun "$dir/c5.init" -m "$M" --cache-dir "$S5" --cache-chunk $C -p "Hi" "${GREEDY[@]}"
  dd if=/dev/zero of="$dir/full/filler" bs=4k 2>/dev/null
  dd if=/dev/zero of="$dir/full/filler2" bs=1 2>/dev/null
  before=$(find "$S5" -type f | sort | md5sum)
  krun "$dir/c5.full" -m "$M" --cache-dir "$S5" "${A4[@]}" "${GREEDY[@]}"; rc=$?
  check "[ $rc -eq 0 ] && same_answer '$dir/c5.full' '$dir/c4.cold'" "full disk: exit $rc or answer differs: $(cat "$dir/c5.full.err")"
  nwarn=$(grep -c . "$dir/c5.full.err")
  check "[ $nwarn -eq 1 ] && grep -q \"$S5\" '$dir/c5.full.err'" "full disk: want one warning line naming the store, got: $(cat "$dir/c5.full.err")"
  check "[ \"\$(find '$S5' -type f | sort | md5sum)\" = '$before' ] && [ -z \"\$(ls -A '$S5/tmp')\" ]" "full disk: the store changed: $(find "$S5" -newer "$dir/c5.init")"
  check "[ \$(jf '$dir/c5.full' n_published_tokens) = 0 ]" "run --json on a full disk claims it published: $(cat "$dir/c5.full")"
  # save --cache-dir on the full disk: exit 0, and it does not claim to have published anything.
  expect_exit 0 "disk full" -- $KV save -m "$M" --prefix "$PREFIX" --cache-dir "$S5" --json
  check "[ \$(jf '$dir/out' n_published_tokens) = 0 ] && [ \$(jf '$dir/out' chunks_written) = 0 ]" "save --cache-dir on a full disk: $(cat "$dir/out")"
  expect_exit 0 "disk full" -- $KV save -m "$M" --prefix "$PREFIX" --cache-dir "$S5"
  check "grep -q '^published 0 of' '$dir/err'" "save --cache-dir on a full disk claims: $(grep published "$dir/err")"
  # Read-only: the chunks of a populated store are served, nothing is written.
  rm -f "$dir/full/filler" "$dir/full/filler2"
  rm -rf "$S5"
  krun "$dir/c5.pop" -m "$M" --cache-dir "$S5" --cache-chunk $C "${A4[@]}" "${GREEDY[@]}"
  if mount -o remount,ro "$dir/full"; then
    krun "$dir/c5.ro" -m "$M" --cache-dir "$S5" "${A4[@]}" "${GREEDY[@]}"; rc=$?
    check "[ $rc -eq 0 ] && same_answer '$dir/c5.ro' '$dir/c4.cold' && [ \$(jf '$dir/c5.ro' n_reused_tokens) -gt 0 ]" "read-only store (same prompt): exit $rc, or differs, or reused nothing: $(cat "$dir/c5.ro.err")"
    krun "$dir/c5.ro2" -m "$M" --cache-dir "$S5" --prefix "$PREFIX_DIV" -p "$Q_IN" "${GREEDY[@]}"; rc=$?
    krun "$dir/c5.ro2.cold" -m "$M" --no-cache --prefix "$PREFIX_DIV" -p "$Q_IN" "${GREEDY[@]}"
    check "[ $rc -eq 0 ] && same_answer '$dir/c5.ro2' '$dir/c5.ro2.cold'" "read-only store (new chunks to publish): exit $rc or differs: $(cat "$dir/c5.ro2.err")"
    check "[ \$(grep -c . '$dir/c5.ro2.err') -le 1 ]" "read-only store: more than one warning line: $(cat "$dir/c5.ro2.err")"
    expect_exit 0 "" -- $KV cache verify --cache-dir "$S5"
    mount -o remount,rw "$dir/full"
  else
    echo "SKIP read-only test: cannot remount the tmpfs read-only"
  fi
fi

section 6; # --- 6. The command line.
S6="$dir/cli"
krun "$dir/c6.pop" -m "$M" --cache-dir "$S6" --cache-chunk 32 --prefix "$PREFIX $PREFIX_DIV" -p "$Q_IN" "${GREEDY[@]}"
expect_exit 0 "" -- $KV cache stats --cache-dir "$S6" --json
check "python3 -c \"import json;d=json.load(open('$dir/out'));assert d['chunk_tokens']==32 and d['chunks']>=2 and d['bytes']>0 and len(d['namespaces'])==1 and d['namespaces'][0]['chunks']==d['chunks'], d\"" "cache stats --json fields"
expect_exit 0 "" -- $KV cache stats --cache-dir "$S6"
check "grep -q '32 tokens per chunk' '$dir/out'" "cache stats text"
expect_exit 0 "" -- $KV cache ls --cache-dir "$S6" --json
check "python3 -c \"import json;d=json.load(open('$dir/out'));c=d['chunks'];assert len(c)>=2 and sorted(x['index'] for x in c)==list(range(1,len(c)+1)) and all(len(x['hash'])==64 and x['bytes']>0 and x['namespace'] for x in c), d\"" "cache ls --json"
expect_exit 1 "holds chunks of 32 tokens" -- $KV run -m "$M" --cache-dir "$S6" --cache-chunk 64 -p x -n 1
expect_exit 1 "multiple of 16" -- $KV run -m "$M" --cache-dir "$dir/c20" --cache-chunk 20 -p x -n 1
expect_exit 2 "max-bytes" -- $KV cache gc --cache-dir "$S6"
expect_exit 2 "cache-dir" -- $KV cache stats
expect_exit 2 "not both" -- $KV run -m "$M" --session "$dir/x.kvs" --cache-dir "$dir/y" -p x
expect_exit 2 "namespace" -- $KV cache rm --cache-dir "$S6"
expect_exit 1 "" -- $KV cache verify --cache-dir "$dir/does-not-exist"
check "[ ! -e '$dir/does-not-exist' ]" "cache verify created the directory it was asked about"
expect_exit 1 "" -- $KV cache stats --cache-dir "$dir/does-not-exist" --json
check "python3 -c \"import json;json.load(open('$dir/out'))['error']\"" "cache stats --json error is not JSON"
# The environment variable names the store; --no-cache ignores it.
S6e="$dir/env"
KVSTASH_CACHE_DIR="$S6e" krun "$dir/c6.env" -m "$M" --cache-chunk $C "${A4[@]}" "${GREEDY[@]}"
check "[ \$(jf '$dir/c6.env' n_published_tokens) -gt 0 ] && [ -n \"\$(find '$S6e/chunks' -name '*.kvc')\" ]" "KVSTASH_CACHE_DIR: nothing published"
KVSTASH_CACHE_DIR="$S6e" krun "$dir/c6.env2" -m "$M" "${A4[@]}" "${GREEDY[@]}"
check "[ \$(jf '$dir/c6.env2' n_reused_tokens) -gt 0 ] && same_answer '$dir/c6.env2' '$dir/c4.cold'" "KVSTASH_CACHE_DIR: repeat did not reuse, or differs"
KVSTASH_CACHE_DIR="$S6e" expect_exit 0 "" -- $KV cache stats --json
check "[ \$(jf '$dir/out' chunks) -gt 0 ]" "cache stats from KVSTASH_CACHE_DIR"
rm -rf "$dir/env-off"
KVSTASH_CACHE_DIR="$dir/env-off" krun "$dir/c6.off" -m "$M" --no-cache "${A4[@]}" "${GREEDY[@]}"
check "[ ! -e '$dir/env-off' ] && [ \$(jf '$dir/c6.off' n_reused_tokens) = 0 ] && same_answer '$dir/c6.off' '$dir/c4.cold'" "--no-cache used KVSTASH_CACHE_DIR"
KVSTASH_CACHE_DIR="$S6e" expect_exit 1 "does not exist" -- $KV run -m "$M" --session "$dir/none.kvs" -p x -n 1
# save -o with a store only from the environment: the file only (no second prefill, no publish).
KVSTASH_CACHE_DIR="$dir/env-save" expect_exit 0 "" -- $KV save -m "$M" --prefix "$PREFIX" -o "$dir/env.kvs"
check "[ -f '$dir/env.kvs' ] && [ ! -e '$dir/env-save' ]" "save -o published into \$KVSTASH_CACHE_DIR"
# A store that cannot be used (its manifest damaged) costs the cache, not the answer.
S6d="$dir/damaged-manifest"
krun "$dir/c6.dm0" -m "$M" --cache-dir "$S6d" --cache-chunk $C "${A4[@]}" "${GREEDY[@]}"
printf 'kvstash store\nversion 1\nchunk_tokens banana\n' >"$S6d/STORE"
krun "$dir/c6.dm" -m "$M" --cache-dir "$S6d" "${A4[@]}" "${GREEDY[@]}"; rc=$?
check "[ $rc -eq 0 ] && same_answer '$dir/c6.dm' '$dir/c4.cold' && grep -q 'answering without the store' '$dir/c6.dm.err'" "damaged manifest: exit $rc or no answer: $(cat "$dir/c6.dm.err")"
expect_exit 1 "STORE" -- $KV cache verify --cache-dir "$S6d"
# save --cache-dir publishes the prefix's chunks.
S6s="$dir/saved"
printf '%s' "$PREFIX" >"$dir/prefix.txt"
expect_exit 0 "" -- $KV save -m "$M" --prefix-file "$dir/prefix.txt" --cache-dir "$S6s" --cache-chunk $C --json
krun "$dir/c6.saved" -m "$M" --cache-dir "$S6s" --prefix-file "$dir/prefix.txt" -p "$Q_IN" "${GREEDY[@]}"
check "[ \$(jf '$dir/c6.saved' n_reused_tokens) -gt 0 ] && same_answer '$dir/c6.saved' '$dir/c4.cold'" "save --cache-dir: the run reused nothing or differs"
# --cache-max-bytes evicts down to the budget after publishing (leaf first: chunk #1 stays).
S6m="$dir/budget"
krun "$dir/c6.budget" -m "$M" --cache-dir "$S6m" --cache-chunk $C --cache-max-bytes 10K "${A4[@]}" "${GREEDY[@]}"
$KV cache stats --cache-dir "$S6m" --json >"$dir/c6.bstats"
check "[ \$(jf '$dir/c6.bstats' bytes) -le 10240 ] && [ \$(jf '$dir/c6.bstats' chunks) -ge 1 ] && [ -n \"\$(chunk_path '$S6m' 1)\" ] && same_answer '$dir/c6.budget' '$dir/c4.cold'" "--cache-max-bytes 10K: $(cat "$dir/c6.bstats" | head -c 200)"
# Two models in one store: two namespaces; rm --namespace removes one model's chunks only.
$KV cache stats --cache-dir "$S6" --json >"$dir/c6.stats1"
krun "$dir/c6.other" -m "$dir/other.gguf" --cache-dir "$S6" --prefix "$PREFIX $PREFIX_DIV" -p "$Q_IN" "${GREEDY[@]}"
$KV cache stats --cache-dir "$S6" --json >"$dir/c6.stats2"
check "[ \$(python3 -c \"import json;print(len(json.load(open('$dir/c6.stats2'))['namespaces']))\") -eq 2 ]" "two models in one store: not two namespaces"
ns_other=$(python3 -c "
import json,sys
old={n['hash'] for n in json.load(open(sys.argv[1]))['namespaces']}
print(' '.join(n['hash'] for n in json.load(open(sys.argv[2]))['namespaces'] if n['hash'] not in old))" "$dir/c6.stats1" "$dir/c6.stats2")
n_before=$(jf "$dir/c6.stats2" chunks)
expect_exit 0 "" -- $KV cache rm --cache-dir "$S6" --namespace "$ns_other" --json
removed=$(jf "$dir/out" chunks_removed)
$KV cache stats --cache-dir "$S6" --json >"$dir/c6.stats3"
check "[ $removed -ge 1 ] && [ \$(jf '$dir/c6.stats3' chunks) -eq $((n_before - removed)) ] && ! grep -q '$ns_other' '$dir/c6.stats3'" "cache rm --namespace: removed $removed of $n_before"
expect_exit 1 "not a namespace hash" -- $KV cache rm --cache-dir "$S6" --namespace zz
# rm --all empties the store; a later run is cold again and right.
# Another process holds gc.lock: gc and rm say what they wait for, then do their job.
if command -v flock >/dev/null; then
  flock "$S6/gc.lock" sleep 2 &
  sleep 0.3
  expect_exit 0 "waiting for another process's garbage collector" -- $KV cache gc --cache-dir "$S6" --max-bytes 1G
  flock "$S6/gc.lock" sleep 2 &
  sleep 0.3
  expect_exit 0 "gc.lock" -- $KV cache rm --cache-dir "$S6" --namespace "$(printf '0%.0s' $(seq 64))"
  wait
else
  echo "SKIP gc.lock wait test: no flock(1)"
fi
expect_exit 0 "" -- $KV cache rm --cache-dir "$S6" --all --json
check "[ \$(jf '$dir/out' chunks_removed) -ge 2 ] && [ -z \"\$(find '$S6/chunks' -name '*.kvc')\" ]" "cache rm --all left chunks"
krun "$dir/c6.after" -m "$M" --cache-dir "$S6" "${A4[@]}" "${GREEDY[@]}"
check "[ \$(jf '$dir/c6.after' n_reused_tokens) = 0 ] && same_answer '$dir/c6.after' '$dir/c4.cold'" "run after cache rm --all"
expect_exit 0 "" -- $KV cache gc --cache-dir "$S6" --max-bytes 0 --json
check "[ -z \"\$(find '$S6/chunks' -name '*.kvc')\" ]" "cache gc --max-bytes 0 left chunks"
expect_exit 0 "" -- $KV cache gc --cache-dir "$S6" --max-bytes 1K

section end
echo "store_cli_test: $pass passed, $fail failed"
[ $fail -eq 0 ]
