#!/usr/bin/env bash
# An outside project with its own llama.cpp target adds kvstash with add_subdirectory
# (tests/install/subproject): kvstash uses the parent's llama, adds no tests or tools, needs none of
# the CLI's or the tests' packages (CLI11, nlohmann-json and GTest are made unfindable), changes
# none of the parent's cache, and the parent's program runs. Builds llama.cpp once more (minutes).
# usage: subproject_test.sh SOURCE_DIR CLI
set -euo pipefail
src=$1 cli=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake -S "$src/tests/install/subproject" -B "$work/b" -DCMAKE_BUILD_TYPE=Release \
  -DKVSTASH_SOURCE_DIR="$src" -DLLAMA_SOURCE_DIR="$src/third_party/llama.cpp" \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_COMMON=OFF -DLLAMA_CURL=OFF \
  -DCMAKE_DISABLE_FIND_PACKAGE_CLI11=ON -DCMAKE_DISABLE_FIND_PACKAGE_nlohmann_json=ON \
  -DCMAKE_DISABLE_FIND_PACKAGE_GTest=ON >"$work/cfg.log" ||
  { cat "$work/cfg.log"; exit 1; }
grep "kvstash subproject:" "$work/cfg.log"
grep -q "kvstash: using the existing llama target" "$work/cfg.log" ||
  { echo "FAIL: kvstash did not use the parent's llama target"; exit 1; }
[ ! -d "$work/b/kvstash/llama.cpp" ] || { echo "FAIL: kvstash built a second llama.cpp"; exit 1; }
tests=$(cd "$work/b" && ctest -N | awk '/Total Tests:/ {print $3}')
[ "$tests" = "1" ] || { echo "FAIL: the parent has $tests tests, expected only its own"; exit 1; }
cmake --build "$work/b" -j 2 --target consumer >"$work/build.log" || { tail -30 "$work/build.log"; exit 1; }
"$cli" make-test-model -o "$work/m.gguf" >/dev/null
"$work/b/consumer" "$work/m.gguf" "$work/a.kvs"
echo "subproject_test: 1 passed, 0 failed"
