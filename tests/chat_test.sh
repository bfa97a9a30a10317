#!/usr/bin/env bash
# Drives `kvstash chat` through pipes: three turns saved to a session, a fourth in a new process,
# against one process running all four cold; /reset, /save FILE, /exit, damaged files, end of input.
# Usage: chat_test.sh path/to/kvstash
set -u
KV=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
. "$(dirname "$0")/test_lib.sh"
export KVSTASH_LLAMA_LOGS=quiet
unset KVSTASH_CACHE_DIR

M="$dir/tiny.gguf"
$KV make-test-model -o "$M" || { echo "cannot make model"; exit 1; }
CHAT=(chat -m "$M" --temp 0 -n 12 -sys "You are terse." -v)
turns() { grep '^chat: turn' "$1"; }
field() { sed -n "s/^chat: turn $2: \([0-9]*\) prompt tokens, \([0-9]*\) reused, \([0-9]*\) decoded.*/\\$3/p" "$1"; }

# One long cold run of four turns, against three turns saved and a fourth resumed.
printf 'Hello there\nWhat is two plus two?\nThanks\nAnything else?\n' | $KV "${CHAT[@]}" >"$dir/long.out" 2>"$dir/long.err"
check "[ \$(wc -l <'$dir/long.out') -eq 4 ]" "long run: four answers, one per line"
printf 'Hello there\nWhat is two plus two?\nThanks\n' | $KV "${CHAT[@]}" --session "$dir/s.kvs" >"$dir/a.out" 2>"$dir/a.err"
check "[ -s '$dir/s.kvs' ] && [ -s '$dir/s.kvs.chat' ]" "session and conversation file written"
printf 'Anything else?\n' | $KV "${CHAT[@]}" --session "$dir/s.kvs" >"$dir/b.out" 2>"$dir/b.err"
cat "$dir/a.out" "$dir/b.out" >"$dir/resumed.out"
check "cmp -s '$dir/long.out' '$dir/resumed.out'" "resumed answers differ from the long run's"
# The resumed process decodes only what the long run decodes for the fourth turn.
check "[ '$(field "$dir/b.err" 1 3)' = '$(field "$dir/long.err" 4 3)' ] && [ '$(field "$dir/b.err" 1 2)' = '$(field "$dir/long.err" 4 2)' ] && [ -n '$(field "$dir/b.err" 1 3)' ]" "resumed turn: $(turns "$dir/b.err") vs $(turns "$dir/long.err" | tail -1)"
check "[ $(field "$dir/b.err" 1 2) -gt $(field "$dir/long.err" 3 1) ]" "resumed turn reuses the history"
# The history is shown on resume (stderr from a pipe; stdout holds answers only).
check "grep -q '^user: What is two plus two?' '$dir/b.err' && grep -q '^system: You are terse.' '$dir/b.err'" "history not shown on resume"

# /save FILE, then resume from FILE; /exit stops reading.
printf 'Hello there\n/save %s\n/exit\nnever sent\n' "$dir/copy.kvs" | $KV "${CHAT[@]}" >"$dir/c.out" 2>"$dir/c.err"
check "[ \$(wc -l <'$dir/c.out') -eq 1 ] && grep -q 'saved' '$dir/c.err'" "/save or /exit"
printf 'What is two plus two?\n' | $KV "${CHAT[@]}" --session "$dir/copy.kvs" >"$dir/d.out" 2>"$dir/d.err"
check "[ \"\$(cat '$dir/c.out' '$dir/d.out')\" = \"\$(head -2 '$dir/long.out')\" ]" "resume from /save FILE"

# /reset: the conversation starts again (the first answer again), the system prompt is reused.
printf 'Hello there\n/reset\nHello there\n' | $KV "${CHAT[@]}" >"$dir/r.out" 2>"$dir/r.err"
check "[ \"\$(sed -n 2p '$dir/r.out')\" = \"\$(head -1 '$dir/long.out')\" ] && [ $(field "$dir/r.err" 2 2) -gt 0 ]" "/reset"
# Unknown commands are errors that do not end the chat; // sends a line starting with /.
printf '/nope\n//slash\n' | $KV "${CHAT[@]}" >"$dir/u.out" 2>"$dir/u.err"
check "grep -q \"unknown command '/nope'\" '$dir/u.err' && [ \$(wc -l <'$dir/u.out') -eq 1 ]" "unknown command"

# End of input without a newline, and an empty input.
printf 'Hello there' | $KV "${CHAT[@]}" >"$dir/e.out" 2>/dev/null
check "[ \"\$(cat '$dir/e.out')\" = \"\$(head -1 '$dir/long.out')\" ]" "a last line without newline"
expect_exit 0 "" -- $KV "${CHAT[@]}" </dev/null

# Damaged files are refused by name and left as they were.
cp "$dir/s.kvs" "$dir/good.kvs"
head -c 1000 "$dir/good.kvs" >"$dir/cut.kvs"; cp "$dir/s.kvs.chat" "$dir/cut.kvs.chat"
expect_exit 1 "error: session file '$dir/cut.kvs' is corrupt" -- $KV "${CHAT[@]}" --session "$dir/cut.kvs"
check "[ \$(wc -c <'$dir/cut.kvs') -eq 1000 ]" "damaged session was replaced"
cp "$dir/s.kvs" "$dir/bad.kvs"; printf 'kvstash chat 1\ngarbage' >"$dir/bad.kvs.chat"
expect_exit 1 "conversation file '$dir/bad.kvs.chat' is damaged" -- $KV "${CHAT[@]}" --session "$dir/bad.kvs"
# A session without its conversation file: a new conversation in it, with a note.
cp "$dir/s.kvs" "$dir/lone.kvs"
printf 'Hello there\n' | $KV "${CHAT[@]}" --session "$dir/lone.kvs" >"$dir/l.out" 2>"$dir/l.err"
check "grep -q 'no conversation file' '$dir/l.err' && [ \"\$(cat '$dir/l.out')\" = \"\$(head -1 '$dir/long.out')\" ]" "session without conversation file"

# SIGINT during an answer stops it (the partial answer is kept) and the chat goes on; at the
# prompt it leaves with 130, saving.
mkfifo "$dir/in"
env --default-signal=INT,TERM $KV chat -m "$M" --temp 0 -n 100000 -c 8192 --session "$dir/sig.kvs" \
  <"$dir/in" >"$dir/sig.out" 2>"$dir/sig.err" &
pid=$!
exec 3>"$dir/in"
echo "Tell me a long story" >&3
for _ in $(seq 1 100); do [ -s "$dir/sig.out" ] && break; sleep 0.1; done
kill -INT $pid
echo "/save $dir/after.kvs" >&3
for _ in $(seq 1 100); do [ -s "$dir/after.kvs.chat" ] && break; sleep 0.1; done
kill -INT $pid; wait $pid; rc=$?
exec 3>&-
check "[ $rc -eq 130 ] && [ \$(wc -l <'$dir/sig.out') -eq 1 ] && [ -s '$dir/after.kvs' ]" "SIGINT: rc $rc, $(wc -l <"$dir/sig.out") lines"
check "[ \$(grep -c '^message' '$dir/sig.kvs.chat') -eq 2 ] && grep -q '^message assistant' '$dir/sig.kvs.chat'" "SIGINT: the stopped answer is kept and saved"

# Through the prefix store instead of a session file: a second process restores the first one's
# whole chunks (16 tokens each here) from its first turn on, and answers as the first did.
printf 'Hello there\nWhat is two plus two?\n' | $KV "${CHAT[@]}" --cache-dir "$dir/store" --cache-chunk 16 >"$dir/st1.out" 2>"$dir/st1.err"
printf 'Hello there\nWhat is two plus two?\n' | $KV "${CHAT[@]}" --cache-dir "$dir/store" >"$dir/st2.out" 2>"$dir/st2.err"
check "[ \$(wc -l <'$dir/st1.out') -eq 2 ] && cmp -s '$dir/st1.out' '$dir/st2.out'" "store: the second process answers as the first"
check "[ '$(field "$dir/st1.err" 1 2)' = 0 ] && [ $(field "$dir/st2.err" 1 2) -ge 16 ]" "store: turn 1 restored from the store ($(turns "$dir/st2.err" | head -1))"
# Usage: --session and --cache-dir together.
expect_exit 2 "not both" -- $KV chat -m "$M" --session "$dir/s.kvs" --cache-dir "$dir/store"

echo "chat_test: $pass passed, $fail failed"
[ $fail -eq 0 ]
