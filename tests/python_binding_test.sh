#!/usr/bin/env bash
# The Python bindings (bindings/python) against an installed kvstash: `pip install
# --no-build-isolation --no-index --target` of a copy of the package, an import from there, the
# guide example, and `python3 -m unittest` of tests/test_properties.py on two generated models.
# Usage: python_binding_test.sh PREFIX path/to/kvstash
#   PREFIX: an installed tree (PREFIX/lib/libkvstash.so). python3: $PYTHON, else from PATH. The
#   pip check needs setuptools (and wheel, for setuptools < 70.1) in that Python, or else in
#   /usr/bin/python3 (Debian: python3-setuptools python3-wheel); without one it fails saying so.
set -u
[ $# -eq 2 ] || { echo "usage: $0 PREFIX path/to/kvstash"; exit 2; }
PREFIX=$(cd "$1" && pwd) || { echo "FAIL: no prefix $1"; exit 1; }
KV=$2
HERE=$(cd "$(dirname "$0")" && pwd)
PKG=$(cd "$HERE/../bindings/python" && pwd)
PY=${PYTHON:-python3}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
source "$HERE/test_lib.sh"

command -v "$PY" >/dev/null || { echo "FAIL: $PY is not installed"; exit 1; }
export KVSTASH_LIBRARY=$PREFIX/lib/libkvstash.so
[ -f "$KVSTASH_LIBRARY" ] || { echo "FAIL: $KVSTASH_LIBRARY is missing"; exit 1; }
"$KV" make-test-model -o "$dir/a.gguf" >/dev/null 2>&1 || { echo "FAIL: cannot make model a"; exit 1; }
"$KV" make-test-model -o "$dir/b.gguf" --seed 7 >/dev/null 2>&1 || { echo "FAIL: cannot make model b"; exit 1; }
export KVSTASH_TEST_MODEL=$dir/a.gguf KVSTASH_TEST_MODEL_B=$dir/b.gguf PYTHONDONTWRITEBYTECODE=1

# pip install, offline, from a copy (pip builds in the source tree), with a Python that can.
can_build() { "$1" -c 'import setuptools, sys
v = tuple(int(x) for x in setuptools.__version__.split(".")[:2])
if v < (70, 1): import wheel' 2>/dev/null; }
pip_py=""
for p in "$PY" /usr/bin/python3; do
  if command -v "$p" >/dev/null && can_build "$p"; then pip_py=$p; break; fi
done
site=""
if [ -z "$pip_py" ]; then
  bad "no Python with setuptools and wheel for pip install --no-build-isolation ($PY, /usr/bin/python3)"
else
  cp -r "$PKG" "$dir/src" && rm -rf "$dir/src/build" "$dir/src"/*.egg-info
  if "$pip_py" -m pip install --quiet --no-build-isolation --no-index --target "$dir/site" "$dir/src" \
      >"$dir/pip.log" 2>&1; then
    ok; site=$dir/site
    check '(cd "$dir" && PYTHONPATH="$site" "$PY" -c "import kvstash, sys; assert kvstash.__file__.startswith(sys.argv[1]), kvstash.__file__; print(\"kvstash\", kvstash.version())" "$site")' \
      "the installed package does not import"
  else
    bad "pip install --no-build-isolation failed ($pip_py)"; cat "$dir/pip.log"
  fi
fi

# The guide example and the tests: on the installed copy when there is one, else on the source.
if [ -n "$site" ]; then
  export PYTHONPATH=$site KVSTASH_PYTHON_INSTALLED=1
fi
if (cd "$dir" && "$PY" "$PKG/examples/guide.py" "$dir/a.gguf") >"$dir/guide.out" 2>"$dir/guide.err"; then
  check '[ -s "$dir/guide.out" ]' "the guide example printed nothing"
  cat "$dir/guide.out"
else
  bad "examples/guide.py failed"; cat "$dir/guide.err"
fi

(cd "$dir" && "$PY" -m unittest discover -v -s "$PKG/tests" -p 'test_*.py') >"$dir/test.log" 2>&1
test_rc=$?
cat "$dir/test.log"
ran=$(sed -n 's/^Ran \([0-9][0-9]*\) tests\{0,1\} in .*/\1/p' "$dir/test.log")
# "FAILED (failures=1, errors=2)": failures and errors count, skips do not (there are none).
failures=$(sed -n 's/^FAILED (\(.*\))/\1/p' "$dir/test.log" | tr ',' '\n' |
  sed -n 's/^ *\(failures\|errors\|unexpected successes\)=\([0-9]*\)/\2/p' | awk '{s += $1} END {print s + 0}')
ran=${ran:-0}
pass=$((pass + ran - failures)) fail=$((fail + failures))
[ "$ran" -gt 0 ] || bad "unittest ran no test"
[ "$test_rc" -eq 0 ] || [ "$failures" -gt 0 ] || bad "unittest exited $test_rc"

echo "python_binding_test: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
