#!/usr/bin/env bash
# The installed tree works for outside programs: `cmake --install` into PREFIX (shared with the
# binding tests, which run after this one), then a C++ program through find_package(kvstash),
# shared and static, and a C program through pkg-config, before and after the tree is moved.
# usage: install_test.sh BUILD_DIR SOURCE_DIR PREFIX CLI
set -euo pipefail
build=$1 src=$2 prefix=$3 cli=$4
export KVSTASH_LLAMA_LOGS=quiet  # the consumers' llama.cpp lines would bury a failure
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
pass() { passed=$((passed + 1)); echo "ok: $*"; }

rm -rf "$prefix"
cmake --install "$build" --prefix "$prefix" >"$work/install.log"
for f in include/kvstash/kvstash.h include/kvstash/version.h include/kvstash/session.h \
         lib/libkvstash.a lib/libkvstash.so lib/cmake/kvstash/kvstashConfig.cmake \
         lib/cmake/kvstash/kvstashConfigVersion.cmake lib/pkgconfig/kvstash.pc bin/kvstash; do
  [ -e "$prefix/$f" ] || { echo "FAIL: $f not installed"; exit 1; }
done
soname=$(objdump -p "$prefix/lib/libkvstash.so" | awk '/SONAME/ {print $2}')
[ "$soname" = "libkvstash.so.0.2" ] || { echo "FAIL: SONAME '$soname'"; exit 1; }
exported=$(nm -D --defined-only "$prefix/lib/libkvstash.so")
if grep -qE ' T (llama|ggml)_' <<<"$exported"; then
  echo "FAIL: libkvstash.so exports llama.cpp's symbols"; exit 1
fi
pass "install tree, SONAME $soname, llama.cpp's symbols hidden"

"$cli" make-test-model -o "$work/m.gguf" >/dev/null

cmake -S "$src/tests/install/find_package" -B "$work/fp" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_BUILD_TYPE=Release >"$work/fp.log" || { cat "$work/fp.log"; exit 1; }
cmake --build "$work/fp" -j 2 >>"$work/fp.log" || { cat "$work/fp.log"; exit 1; }
"$work/fp/consumer_shared" "$work/m.gguf" "$work/a.kvs"
# ldd's output is kept before it is searched: with pipefail, `ldd | grep -q` fails whenever grep
# exits at the first match before ldd has written everything (SIGPIPE).
libs=$(ldd "$work/fp/consumer_shared")
grep -q "$prefix/lib/libkvstash.so" <<<"$libs" || {
  echo "FAIL: consumer_shared does not use the installed libkvstash.so"; echo "$libs"; exit 1; }
pass "find_package(kvstash) -> kvstash::kvstash (shared)"
"$work/fp/consumer_static" "$work/m.gguf" "$work/b.kvs"
libs=$(ldd "$work/fp/consumer_static")
if grep -q libkvstash <<<"$libs"; then
  echo "FAIL: consumer_static links libkvstash.so"; echo "$libs"; exit 1
fi
pass "find_package(kvstash) -> kvstash::kvstash_static"

build_c() {  # build_c PREFIX OUT: the C consumer through pkg-config
  local flags
  flags=$(PKG_CONFIG_PATH="$1/lib/pkgconfig" pkg-config --cflags --libs kvstash)
  # shellcheck disable=SC2086
  cc -std=c11 -Wall -Wextra -Werror "$src/tests/install/pkgconfig/main.c" -o "$2" $flags \
     -Wl,-rpath,"$1/lib"
}
build_c "$prefix" "$work/c_consumer"
"$work/c_consumer" "$work/m.gguf" "$work/c.kvs"
pass "pkg-config kvstash -> a C program"

mv "$prefix" "$work/moved"
status=0
build_c "$work/moved" "$work/c_moved" && "$work/c_moved" "$work/m.gguf" "$work/d.kvs" || status=$?
mv "$work/moved" "$prefix"
[ $status -eq 0 ] || { echo "FAIL: the moved install tree"; exit 1; }
pass "pkg-config after moving the install tree"

echo "install_test: $passed passed, 0 failed"
