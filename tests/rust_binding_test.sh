#!/usr/bin/env bash
# The Rust bindings (bindings/rust/kvstash) against an installed kvstash: `cargo test --offline`
# (the unit tests and tests/properties.rs on two generated models) and the guide example.
# Usage: rust_binding_test.sh PREFIX path/to/kvstash
#   PREFIX: an installed tree (PREFIX/lib/libkvstash.so, PREFIX/lib/pkgconfig/kvstash.pc), found
#   through pkg-config as a user would. cargo: from PATH, else $HOME/.cargo/bin. The crate builds
#   in a scratch CARGO_TARGET_DIR (KVSTASH_CARGO_TARGET_DIR keeps one between runs).
set -u
[ $# -eq 2 ] || { echo "usage: $0 PREFIX path/to/kvstash"; exit 2; }
PREFIX=$(cd "$1" && pwd) || { echo "FAIL: no prefix $1"; exit 1; }
KV=$2
HERE=$(cd "$(dirname "$0")" && pwd)
CRATE=$HERE/../bindings/rust/kvstash
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
source "$HERE/test_lib.sh"

CARGO=$(command -v cargo || echo "$HOME/.cargo/bin/cargo")
[ -x "$CARGO" ] || { echo "FAIL: cargo is not installed (not on PATH, not in \$HOME/.cargo/bin)"; exit 1; }
[ -f "$PREFIX/lib/pkgconfig/kvstash.pc" ] || { echo "FAIL: $PREFIX/lib/pkgconfig/kvstash.pc is missing"; exit 1; }
"$KV" make-test-model -o "$dir/a.gguf" >/dev/null 2>&1 || { echo "FAIL: cannot make model a"; exit 1; }
"$KV" make-test-model -o "$dir/b.gguf" --seed 7 >/dev/null 2>&1 || { echo "FAIL: cannot make model b"; exit 1; }

unset KVSTASH_DIR
export PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
export CARGO_TARGET_DIR=${KVSTASH_CARGO_TARGET_DIR:-$dir/target}
export KVSTASH_TEST_MODEL=$dir/a.gguf KVSTASH_TEST_MODEL_B=$dir/b.gguf
cd "$CRATE" || exit 1

# Each `test result:` line of cargo's counts its passes and failures.
"$CARGO" test --offline 2>&1 | tee "$dir/test.log"
test_rc=${PIPESTATUS[0]}
while read -r p f; do
  pass=$((pass + p)) fail=$((fail + f))
done < <(sed -n 's/^test result: .* \([0-9][0-9]*\) passed; \([0-9][0-9]*\) failed.*/\1 \2/p' "$dir/test.log")
[ "$pass" -gt 0 ] || bad "cargo test ran no test"
[ "$test_rc" -eq 0 ] || grep -q "^test result: FAILED" "$dir/test.log" || bad "cargo test exited $test_rc"

if "$CARGO" run --offline --quiet --example guide -- "$dir/a.gguf" >"$dir/guide.out" 2>"$dir/guide.err"; then
  check 'grep -q "tokens," "$dir/guide.out"' "the guide example printed no answer"
  cat "$dir/guide.out"
else
  bad "cargo run --example guide failed"; cat "$dir/guide.err"
fi

# The README promises Rust 1.63 (Debian 12's): when Debian's cargo is there besides the one used
# above, the crate, its tests and examples must build with it too.
if [ -x /usr/bin/cargo ] && [ "$(readlink -f /usr/bin/cargo)" != "$(readlink -f "$CARGO")" ]; then
  if CARGO_TARGET_DIR=$dir/target-debian /usr/bin/cargo build --offline --quiet --all-targets \
      >"$dir/debian.log" 2>&1; then
    pass=$((pass + 1)); echo "ok: builds with $(/usr/bin/rustc --version)"
  else
    bad "the crate does not build with Debian's $(/usr/bin/rustc --version)"; cat "$dir/debian.log"
  fi
fi

echo "rust_binding_test: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
