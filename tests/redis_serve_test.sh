#!/usr/bin/env bash
# `kvstash serve` with the prefix store's Redis tier (--cache-redis), against a redis-server this
# test starts on a free loopback port (a temporary directory, no persistence) and stops:
#   a. two servers with their own --cache-dir and one Redis: a prompt primed on the first is
#      served by the second from Redis (cached_tokens > 0), with the answer of a cold server;
#   b. faults: Redis killed (SIGKILL) while a server runs, restarted on the same port, then full
#      (maxmemory 1, noeviction): every request is 200 with the cold answer, /metrics and the log
#      say what happened, once;
#   c. planted values (a flipped byte, a truncated value, another chunk's value): a miss, never a
#      wrong answer;
#   d. a password in the URL never appears in the log.
# Usage: redis_serve_test.sh path/to/kvstash
set -u

KV=$1
HERE=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d)
declare -A PID PORT
RPID="" RPORT="" RPASS=""
cleanup() {
  local n
  for n in "${!PID[@]}"; do kill -TERM "${PID[$n]}" 2>/dev/null; done
  [ -n "$RPID" ] && kill -KILL "$RPID" 2>/dev/null
  sleep 0.2
  for n in "${!PID[@]}"; do kill -KILL "${PID[$n]}" 2>/dev/null; done
  wait 2>/dev/null
  [ -n "${KEEP_DIR:-}" ] && cp -r "$dir" "$KEEP_DIR"  # for debugging: keep the logs
  rm -rf "$dir"
}
trap cleanup EXIT
unset KVSTASH_CACHE_DIR KVSTASH_API_KEY KVSTASH_CACHE_REDIS
. "$HERE/test_lib.sh"
t_section=$SECONDS
section() { echo "  [$1 at $((SECONDS - t_section)) s]"; }

for tool in redis-server redis-cli curl jq python3; do
  command -v $tool >/dev/null || { echo "redis_serve_test: $tool is missing (scripts/setup-deps.sh)"; exit 1; }
done
M="$dir/tiny.gguf"
$KV make-test-model -o "$M" >/dev/null 2>&1 || { echo "cannot make model"; exit 1; }

# ---- Redis ----------------------------------------------------------------------------------
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
rcli() {
  if [ -n "$RPASS" ]; then redis-cli -p "$RPORT" -a "$RPASS" --no-auth-warning "$@"
  else redis-cli -p "$RPORT" "$@"; fi
}
# start_redis [ARGS...]: redis-server on $RPORT (a free port the first time, the same one after),
# a fresh temporary directory, no persistence; waits for PONG.
start_redis() {
  [ -n "$RPORT" ] || RPORT=$(free_port)
  local rdir; rdir=$(mktemp -d "$dir/redis.XXXX")
  redis-server --port "$RPORT" --bind 127.0.0.1 --dir "$rdir" --save "" --appendonly no \
    --loglevel warning "$@" >"$rdir/log" 2>&1 &
  RPID=$!
  local i
  for i in $(seq 1 100); do
    [ "$(rcli PING 2>/dev/null)" = PONG ] && return 0
    sleep 0.05
  done
  bad "redis-server did not start on port $RPORT"; cat "$rdir/log"; return 1
}
kill_redis() { kill -KILL "$RPID" 2>/dev/null; wait "$RPID" 2>/dev/null; RPID=""; }
# resp.py PORT get KEY FILE | set KEY FILE: a value's exact bytes (redis-cli adds a newline on
# output; python3 has no redis module here), over the raw protocol.
cat >"$dir/resp.py" <<'PY'
import socket, sys
port, op, key, path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
s = socket.create_connection(("127.0.0.1", port))
f = s.makefile("rb")
def command(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else a.encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    s.sendall(out)
    line = f.readline()
    if line[:1] == b"$":
        n = int(line[1:])
        if n < 0:
            return None
        data = f.read(n)
        f.read(2)
        return data
    if line[:1] == b"-":
        sys.exit("error: " + line.decode().strip())
    return line
if op == "get":
    v = command("GET", key)
    if v is None:
        sys.exit("no such key")
    open(path, "wb").write(v)
else:
    command("SET", key, open(path, "rb").read())
PY
rget() { python3 "$dir/resp.py" "$RPORT" get "$1" "$2"; }
rset() { python3 "$dir/resp.py" "$RPORT" set "$1" "$2"; }

# ---- Servers (as in serve_test.sh) ----------------------------------------------------------
# start_server NAME ARGS...: `kvstash serve -m M --port 0 ARGS` logging to $dir/NAME.log; sets
# PID[NAME] and PORT[NAME] and waits for /health 200.
start_server() {
  local name=$1; shift
  "$KV" serve -m "$M" --port 0 "$@" >"$dir/$name.log" 2>&1 &
  PID[$name]=$!
  local i port=""
  for i in $(seq 1 200); do
    port=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$dir/$name.log" 2>/dev/null | head -1)
    [ -n "$port" ] && break
    kill -0 "${PID[$name]}" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$port" ]; then bad "server $name did not start"; cat "$dir/$name.log"; return 1; fi
  PORT[$name]=$port
  for i in $(seq 1 600); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/health")" = 200 ] && return 0
    sleep 0.1
  done
  bad "server $name: /health never turned 200"; cat "$dir/$name.log"; return 1
}
# stop_server NAME: SIGTERM, waits; RC: its exit code (124: did not exit in 30 s)
stop_server() {
  local name=$1 i
  kill -TERM "${PID[$name]}" 2>/dev/null
  RC=124
  for i in $(seq 1 300); do
    kill -0 "${PID[$name]}" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "${PID[$name]}" 2>/dev/null; then
    kill -KILL "${PID[$name]}" 2>/dev/null; wait "${PID[$name]}" 2>/dev/null
  else
    wait "${PID[$name]}"; RC=$?
  fi
  unset "PID[$name]"
}
# call NAME METHOD PATH OUT [BODYFILE]: prints the HTTP status
call() {
  local name=$1 method=$2 path=$3 out=$4 body=${5:-}
  local data=()
  [ -n "$body" ] && data=(-H 'Content-Type: application/json' --data-binary "@$body")
  curl -s --max-time 60 -X "$method" -o "$out" -w '%{http_code}' "${data[@]}" \
    "http://127.0.0.1:${PORT[$name]}$path"
}
jtrue() { jq -e "$2" "$1" >/dev/null 2>&1 || { echo "  not true: $2 over $(head -c 300 "$1")"; return 1; }; }
jget() { jq -r "$2" "$1"; }
# scrape SERVER FILE: /metrics into FILE (comments dropped); metric FILE SERIES: its value
scrape() { call "$1" GET /metrics "$2.txt" >/dev/null; grep -v '^#' "$2.txt" >"$2"; }
metric() { awk -v k="$2" '$1 == k {printf "%d\n", $2; f=1} END {if (!f) print 0}' "$1"; }
m_of() { scrape "$1" "$dir/m.$1"; metric "$dir/m.$1" "$2"; }

PARA="The kvstash server keeps the attention cache of long prompts in a store on disk, so that a restarted server answers the next question without decoding the prompt again. "
LONG=""
for i in $(seq 1 55); do LONG="$LONG$PARA"; done
# body TAG: the request file of prompt TAG (a long prompt that shares no chunk with another tag's)
body() {
  local f="$dir/q.$1"
  [ -f "$f" ] || jq -cn --arg S "Prompt $1. $LONG" '{model:"m",prompt:$S,max_tokens:12,temperature:0}' >"$f"
  echo "$f"
}
# ask NAME TAG: prompt TAG on server NAME into $dir/a.NAME.TAG; prints the HTTP status
ask() { call "$1" POST /v1/completions "$dir/a.$1.$2" "$(body "$2")"; }
# cold TAG: the cold server's answer to prompt TAG (asked once)
cold() {
  local f="$dir/a.cold.$1"
  [ -f "$f" ] || ask cold "$1" >/dev/null
  jget "$f" .choices[0].text
}
# ok_answer NAME TAG WHAT: the answer was 200, a long prompt, 12 tokens, the cold text
ok_answer() {
  local name=$1 tag=$2 what=$3 st=$4 f="$dir/a.$1.$2"
  check "[ '$st' = 200 ] && jtrue '$f' '.usage.prompt_tokens > 1400 and .usage.completion_tokens == 12'" "$what: HTTP $st $(head -c 300 "$f")"
  local got want; got=$(jget "$f" .choices[0].text 2>/dev/null); want=$(cold "$tag")
  check "[ \"\$got\" = \"\$want\" ]" "$what: the answer differs from a cold server's: '$got' vs '$want'"
}
# settle NAME: waits until the server's published + existing chunks stop moving (and are > 0)
settle() {
  local i n prev=-1
  for i in $(seq 1 100); do
    scrape "$1" "$dir/m.settle"
    n=$(( $(metric "$dir/m.settle" kvstash_redis_published_chunks_total) + $(metric "$dir/m.settle" kvstash_redis_existing_chunks_total) ))
    [ "$n" -gt 0 ] && [ "$n" = "$prev" ] && return 0
    prev=$n; sleep 0.1
  done
  return 1
}

# ============================================================================================
section "a. two servers, one Redis"
start_redis || exit 1
URL="redis://127.0.0.1:$RPORT"
start_server cold --cache-dir "$dir/c-cold" || exit 1
start_server s1 --cache-dir "$dir/c1" --cache-redis "$URL" || exit 1
check "grep -q 'Redis tier redis://127.0.0.1:$RPORT' '$dir/s1.log'" "the start-up line names the Redis tier: $(grep 'prefix store' "$dir/s1.log")"
st=$(ask s1 p1)
ok_answer s1 p1 "a: priming" "$st"
check "jtrue '$dir/a.s1.p1' '.usage.prompt_tokens_details.cached_tokens == 0'" "a: the first server starts cold"
check "settle s1" "a: the first server's chunks never settled in Redis"
scrape s1 "$dir/m.a1"
n_pub=$(metric "$dir/m.a1" kvstash_redis_published_chunks_total)
n_db=$(rcli DBSIZE)
check "[ $n_pub -ge 5 ] && [ '$n_db' = $n_pub ]" "a: $n_pub chunks published, $n_db keys in Redis (want >= 5, equal)"
check "[ \$(rcli --scan --pattern 'kvs:*' | grep -cE '^kvs:[0-9a-f]{64}:[0-9a-f]{64}\$') = $n_db ]" "a: keys are kvs:<ns>:<hash>: $(rcli --scan | head -3)"
check "[ \$(metric '$dir/m.a1' kvstash_redis_available) = 1 ] && [ \$(metric '$dir/m.a1' kvstash_redis_errors_total) = 0 ]" "a: available 1, no errors on the first server"
start_server s2 --cache-dir "$dir/c2" --cache-redis "$URL" || exit 1
st=$(ask s2 p1)
ok_answer s2 p1 "a: the second server" "$st"
check "jtrue '$dir/a.s2.p1' '.usage.prompt_tokens_details.cached_tokens >= 1280'" "a: the second server's cached_tokens: $(jq -c .usage "$dir/a.s2.p1")"
check "jtrue '$dir/a.cold.p1' '.usage.prompt_tokens_details.cached_tokens == 0'" "a: the cold server decodes everything"
scrape s2 "$dir/m.a2"
check "[ \$(metric '$dir/m.a2' kvstash_redis_hits_total) -ge 5 ] && [ \$(metric '$dir/m.a2' kvstash_redis_read_bytes_total) -gt 0 ] && [ \$(metric '$dir/m.a2' kvstash_redis_lookups_total) -ge 1 ]" "a: the second server's Redis hits/bytes/lookups: $(grep kvstash_redis_ "$dir/m.a2" | tr '\n' ' ')"
check "[ \$(metric '$dir/m.a2' kvstash_redis_bad_values_total) = 0 ]" "a: no bad values"
# The chunks read from Redis were written into the second server's own directory.
for i in $(seq 1 50); do
  n_local=$($KV cache stats --cache-dir "$dir/c2" --json 2>/dev/null | jq -r .chunks)
  [ "${n_local:-0}" -ge 5 ] && break; sleep 0.1
done
check "[ '${n_local:-0}' -ge 5 ]" "a: chunks from Redis kept in the second server's directory: ${n_local:-none}"
stop_server s1

# ============================================================================================
section "b. faults"
# s2 publishes a prompt of its own first, so both its connections are open when Redis dies.
st=$(ask s2 p2); ok_answer s2 p2 "b: before the kill" "$st"
settle s2
kill_redis
st=$(ask s2 p3); ok_answer s2 p3 "b: Redis killed" "$st"
st=$(ask s2 p4); ok_answer s2 p4 "b: Redis still dead" "$st"
scrape s2 "$dir/m.b1"
check "[ \$(metric '$dir/m.b1' kvstash_redis_available) = 0 ]" "b: kvstash_redis_available 0 during the outage"
check "[ \$(metric '$dir/m.b1' kvstash_redis_errors_total) -gt 0 ] && [ \$(metric '$dir/m.b1' kvstash_redis_outages_total) = 1 ]" "b: errors > 0 and one outage: $(grep -E 'redis_(errors|outages)' "$dir/m.b1" | tr '\n' ' ')"
check "[ \$(grep -c 'is unavailable' '$dir/s2.log') = 1 ]" "b: one 'unavailable' warning for the outage: $(grep -c 'is unavailable' "$dir/s2.log")"
# The backoff is short after a short outage (250 ms doubling per failed try): a request within a few
# seconds of the restart finds Redis again (or the second one, when requests are slow under load).
for k in 5 6; do cold p$k >/dev/null; done
start_redis || exit 1
t0=$SECONDS back=0 n=0
for k in $(seq 5 16); do
  n=$((n + 1))
  st=$(ask s2 p$k); ok_answer s2 p$k "b: Redis restarted (p$k)" "$st"
  [ "$(m_of s2 kvstash_redis_available)" = 1 ] && { back=1; break; }
  [ $((SECONDS - t0)) -gt 8 ] && break
  sleep 0.5
done
check "[ $back = 1 ] && { [ $n -le 2 ] || [ $((SECONDS - t0)) -le 5 ]; }" "b: kvstash_redis_available back to 1 after $n requests, $((SECONDS - t0)) s (back=$back)"
check "grep -q 'is reachable again' '$dir/s2.log'" "b: the 'reachable again' line"
check "settle s2 && [ \$(rcli DBSIZE) -ge 5 ]" "b: chunks published again after the restart: $(rcli DBSIZE) keys"
scrape s2 "$dir/m.b2"
check "[ \$(metric '$dir/m.b2' kvstash_redis_outages_total) = 1 ] && [ \$(grep -c 'is unavailable' '$dir/s2.log') = 1 ]" "b: still one outage after the restart: $(grep -E 'redis_outages' "$dir/m.b2") $(grep -c 'is unavailable' "$dir/s2.log") warnings"
errs=$(metric "$dir/m.b2" kvstash_redis_errors_total)
# Redis full: writes are refused (OOM), reads still work.
rcli CONFIG SET maxmemory-policy noeviction >/dev/null
rcli CONFIG SET maxmemory 1 >/dev/null
k=$((k + 1))
st=$(ask s2 p$k); ok_answer s2 p$k "b: Redis full" "$st"
for i in $(seq 1 50); do grep -q 'refuses writes' "$dir/s2.log" && break; sleep 0.1; done
check "grep -q 'refuses writes (OOM' '$dir/s2.log'" "b: the 'refuses writes' warning: $(grep -i redis "$dir/s2.log" | tail -2)"
st=$(ask s2 p$((k + 1))); ok_answer s2 p$((k + 1)) "b: Redis still full" "$st"
settle s2
scrape s2 "$dir/m.b3"
check "[ \$(metric '$dir/m.b3' kvstash_redis_errors_total) -gt $errs ] && [ \$(metric '$dir/m.b3' kvstash_redis_dropped_chunks_total) -gt 0 ]" "b: errors grew past $errs, chunks dropped: $(grep -E 'redis_(errors|dropped)' "$dir/m.b3" | tr '\n' ' ')"
check "[ \$(grep -c 'refuses writes' '$dir/s2.log') = 1 ]" "b: 'refuses writes' said once: $(grep -c 'refuses writes' "$dir/s2.log")"
check "[ \$(metric '$dir/m.b3' kvstash_redis_available) = 1 ]" "b: a full Redis is still available for reads"
rcli CONFIG SET maxmemory 0 >/dev/null
stop_server s2
check "[ $RC = 0 ]" "b: the server exits 0: $RC"

# ============================================================================================
section "c. planted values"
rcli FLUSHALL >/dev/null
start_server pc --cache-dir "$dir/c-pc" --cache-redis "$URL" || exit 1
st=$(ask pc c); ok_answer pc c "c: priming" "$st"
settle pc
stop_server pc
mapfile -t keys < <(rcli --scan --pattern 'kvs:*' | sort)
check "[ ${#keys[@]} -ge 5 ]" "c: ${#keys[@]} chunk keys"
K=${keys[0]} OTHER=${keys[1]}
rget "$K" "$dir/v.orig" && rget "$OTHER" "$dir/v.other"
size=$(stat -c %s "$dir/v.orig")
python3 - "$dir/v.orig" "$dir/v.flip" "$dir/v.trunc" <<'PY'
import sys
v = bytearray(open(sys.argv[1], "rb").read())
t = bytes(v[: len(v) // 2])
v[len(v) * 3 // 4] ^= 0x40  # in the KV data, past the header
open(sys.argv[2], "wb").write(v)
open(sys.argv[3], "wb").write(t)
PY
for kind in flip trunc other; do
  rset "$K" "$dir/v.$kind" || bad "c: cannot plant $kind"
  start_server "f-$kind" --cache-dir "$dir/c-f-$kind" --cache-redis "$URL" || exit 1
  st=$(ask "f-$kind" c); ok_answer "f-$kind" c "c: $kind value" "$st"
  scrape "f-$kind" "$dir/m.c"
  b=$(metric "$dir/m.c" kvstash_redis_bad_values_total) mi=$(metric "$dir/m.c" kvstash_redis_misses_total)
  check "[ $b -gt 0 ] || [ $mi -gt 0 ]" "c: $kind value: bad_values $b, misses $mi"
  check "jtrue '$dir/a.f-$kind.c' '.usage.prompt_tokens_details.cached_tokens < .usage.prompt_tokens - 256'" "c: $kind value: not everything came from Redis: $(jq -c .usage "$dir/a.f-$kind.c")"
  stop_server "f-$kind"
  # Nothing bad was kept in the server's own directory.
  $KV cache verify --cache-dir "$dir/c-f-$kind" >"$dir/verify.out" 2>&1; rc=$?
  check "[ $rc = 0 ]" "c: $kind value: cache verify: $(cat "$dir/verify.out")"
  rset "$K" "$dir/v.orig"
done
check "[ $size -gt 1000 ] && [ \$(grep -c 'is refused' '$dir/f-flip.log') -ge 1 ] && [ \$(grep -c 'is refused' '$dir/f-other.log') -ge 1 ]" "c: the refusals are logged ($size-byte values)"

# ============================================================================================
section "d. the password"
kill_redis
PW="kvs-Secret-$RANDOM$RANDOM"
RPASS=$PW
start_redis --requirepass "$PW" || exit 1
start_server pw --cache-dir "$dir/c-pw" --cache-redis "redis://:$PW@127.0.0.1:$RPORT" || exit 1
st=$(ask pw d); ok_answer pw d "d: with a password" "$st"
check "settle pw" "d: nothing published with the password"
check "[ \$(m_of pw kvstash_redis_available) = 1 ] && [ \$(rcli DBSIZE) -ge 5 ]" "d: AUTH worked: $(rcli DBSIZE) keys"
stop_server pw
# A wrong password: refused (an outage), said without the password.
start_server wpw --cache-dir "$dir/c-wpw" --cache-redis "redis://:wrong-$PW@127.0.0.1:$RPORT" || exit 1
st=$(ask wpw d); ok_answer wpw d "d: a wrong password" "$st"
check "[ \$(m_of wpw kvstash_redis_available) = 0 ] && grep -q 'is unavailable' '$dir/wpw.log'" "d: a wrong password is an outage: $(grep -i redis "$dir/wpw.log" | tail -1)"
stop_server wpw
check "! grep -qF -- '$PW' '$dir/pw.log' '$dir/wpw.log'" "d: the password is in a log: $(grep -F -- "$PW" "$dir/pw.log" "$dir/wpw.log" | head -2)"
check "grep -qF ':***@127.0.0.1:$RPORT' '$dir/pw.log' && grep -qF ':***@127.0.0.1:$RPORT' '$dir/wpw.log'" "d: ':***@' in the start-up line: $(grep 'prefix store' "$dir/pw.log")"
kill_redis

section "end"
echo "redis_serve_test: $pass passed, $fail failed"
[ $fail -eq 0 ]
