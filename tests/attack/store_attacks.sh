#!/usr/bin/env bash
# CLI attacks against the prefix store. Usage: attack.sh KV WORKDIR
set -u
KV=$1; W=$2
rm -rf "$W"; mkdir -p "$W"
M=$W/tiny.gguf
$KV make-test-model -o $M >/dev/null 2>&1 || { echo "no model"; exit 1; }
P="You are a terse assistant. Answer each question in a few words. Example: Q: 2+2? A: 4. Example: Q: capital of France? A: Paris. Q: What colour is the sky? A:"
R=(-n 12 --temp 0 --json)
ans() { python3 -c "import json,sys;d=json.load(open(sys.argv[1]));print(d.get('text'),d.get('tokens'))" "$1" 2>/dev/null; }
run() { # run OUT DIR [extra]
  local out=$1 d=$2; shift 2
  timeout 60 $KV run -m $M --cache-dir "$d" --cache-chunk 16 -p "$P" "${R[@]}" "$@" >"$out" 2>"$out.err"; echo $?
}
# empty-store reference
rc=$(run $W/ref.json $W/empty); REF=$(ans $W/ref.json); echo "ref rc=$rc: $REF"
mkstore() { rm -rf "$1"; run $W/mk.json "$1" >/dev/null; }
check() { # check NAME DIR
  local rc a; rc=$(run $W/$1.json "$2"); a=$(ans $W/$1.json)
  if [ "$rc" = 0 ] && [ "$a" = "$REF" ]; then echo "HELD  $1"; else echo "BROKE $1 rc=$rc ans=$a"; tail -3 $W/$1.json.err; fi
  rc=$(run $W/$1.2.json "$2"); a=$(ans $W/$1.2.json)
  if [ "$rc" = 0 ] && [ "$a" = "$REF" ]; then :; else echo "BROKE $1 (2nd run) rc=$rc ans=$a"; tail -3 $W/$1.2.json.err; fi
}
D=$W/s
first_chunk() { ls "$1"/chunks/*/*.1.kvc | head -1; }
# --- (1) planted files in D
mkstore $D; c=$(first_chunk $D); rm $c; mkfifo $c; check fifo_chunk $D
mkstore $D; c=$(first_chunk $D); rm $c; truncate -s 1T $c; check sparse_1T_chunk $D
mkstore $D; c=$(first_chunk $D); rm $c; ln -s /dev/zero $c; check symlink_devzero_chunk $D
mkstore $D; c=$(first_chunk $D); rm $c; mkdir $c; check dir_chunk $D
mkstore $D; hh=$(dirname $(first_chunk $D)); mv $hh $W/hh_moved; ln -s $W/hh_moved $hh; check symlink_hh_dir $D
mkstore $D; rm $D/STORE; mkfifo $D/STORE; check fifo_manifest $D
mkstore $D; rm $D/STORE; ln -s /dev/zero $D/STORE; check symlink_manifest_devzero $D
mkstore $D; rm $D/STORE; truncate -s 1G $D/STORE; check sparse_1G_manifest $D
mkstore $D; printf 'kvstash store\nversion 1\nchunk_tokens 16384\n' > $D/STORE; check manifest_other_chunk $D
mkstore $D; rm $D/STORE; mkdir $D/STORE; check dir_manifest $D
mkstore $D; rm -rf $D/tmp; touch $D/tmp; check tmp_is_file $D
mkstore $D; rm -rf $D/ns; touch $D/ns; check ns_is_file $D
mkstore $D; rm -rf $D/chunks; touch $D/chunks; check chunks_is_file $D
mkstore $D; rm -f $D/gc.lock; mkfifo $D/gc.lock; check fifo_gclock $D
mkstore $D; rm -f $D/gc.lock; mkdir $D/gc.lock; check dir_gclock $D
mkstore $D; for f in $D/ns/*.txt; do rm $f; mkfifo $f; done; check fifo_ns $D
mkstore $D; rm -rf $D/tmp; mkfifo $D/tmp; check tmp_fifo $D
rm -rf $D; touch $D; check store_dir_is_file $D; rm -f $D
echo "--- (1b) cache commands on planted stores (timeout 10 each)"
for cmd in stats ls verify "gc --max-bytes 0" "rm --all"; do
  mkstore $D; for f in $D/ns/*.txt; do rm $f; mkfifo $f; done
  c=$(first_chunk $D); rm $c; mkfifo $c
  timeout 10 $KV cache $cmd --cache-dir $D >$W/cc.out 2>&1; echo "cache $cmd (fifo ns+chunk): rc=$?"
done
mkstore $D; ( flock $D/gc.lock sleep 30 ) & FL=$!; sleep 0.5
timeout 8 $KV cache gc --max-bytes 0 --cache-dir $D >/dev/null 2>&1; echo "gc with gc.lock held by another process: rc=$? (124 = hang)"
rc=$(run $W/gl.json $D); echo "run while gc.lock held (with max-bytes): rc=$rc"
timeout 30 $KV run -m $M --cache-dir $D -p "$P other" --cache-max-bytes 1 "${R[@]}" >/dev/null 2>&1; echo "run --cache-max-bytes 1 with gc.lock held: rc=$?"
du -sb $D/chunks | awk '{print "  store bytes after (budget 1):", $1}'
kill $FL 2>/dev/null; wait $FL 2>/dev/null
# --- (2) outside deletion
echo "--- (2) symlinked subdirs"
mkstore $D; O=$W/outside_tmp; mkdir -p $O; echo precious > $O/notes.tmp; echo precious > $O/1.abc.tmp
rm -rf $D/tmp; ln -s $O $D/tmp
$KV cache gc --max-bytes 0 --cache-dir $D >$W/g.out 2>&1; echo "gc rc=$? $(cat $W/g.out | tail -1)"
ls $O | sed 's/^/  outside tmp left: /'; [ -e $O/notes.tmp ] && echo "HELD tmp symlink gc" || echo "BROKE tmp symlink: gc deleted $O/notes.tmp"
echo precious > $O/notes.tmp
timeout 60 $KV run -m $M --cache-dir $D -p "$P 2" --cache-max-bytes 1 "${R[@]}" >/dev/null 2>&1; echo "run --cache-max-bytes rc=$?"
[ -e $O/notes.tmp ] && echo "HELD tmp symlink run-evict" || echo "BROKE tmp symlink: run --cache-max-bytes deleted $O/notes.tmp"
V=$W/victim; mkstore $V; nv=$(find $V/chunks -type f | wc -l)
mkstore $D; rm -rf $D/chunks; ln -s $V/chunks $D/chunks
$KV cache rm --all --cache-dir $D >$W/r.out 2>&1; echo "rm rc=$? $(tail -1 $W/r.out)"
n=$(find $V/chunks -type f | wc -l); [ $n = $nv ] && echo "HELD chunks symlink rm" || echo "BROKE chunks symlink: rm deleted $((nv-n)) of victim's $nv chunks"
mkstore $V; mkstore $D; rm -rf $D/chunks; ln -s $V/chunks $D/chunks
$KV cache gc --max-bytes 0 --cache-dir $D >$W/r.out 2>&1; echo "gc rc=$? $(tail -1 $W/r.out)"
n=$(find $V/chunks -type f | wc -l); [ $n = $nv ] && echo "HELD chunks symlink gc" || echo "BROKE chunks symlink: gc deleted $((nv-n)) of victim's $nv chunks"
mkstore $D; rm -rf $D/ns; mkdir $W/outside_ns; ln -s $W/outside_ns $D/ns; rm -rf $D/chunks
run $W/x.json $D >/dev/null; echo "files written to outside ns via symlink: $(ls $W/outside_ns | wc -l)"
mkstore $D; f=$(ls $D/ns/*.txt | head -1); rm $f; echo "SECRET=hunter2" > $W/secret; ln -s $W/secret $f
$KV cache stats --json --cache-dir $D 2>/dev/null | grep -o 'SECRET=[a-z0-9]*' | sed 's/^/  stats disclosed via ns symlink: /'
echo done
