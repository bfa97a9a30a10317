# Shared by the shell test suites (cli_test.sh, store_cli_test.sh): pass/fail counting and the
# exit-code check. Source it after setting $dir (a scratch directory).
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
check() { if eval "$1"; then ok; else bad "$2"; fi; }
# expect_exit CODE PATTERN -- command...: exit code and a stderr line matching PATTERN
expect_exit() {
  local code=$1 pattern=$2; shift 3
  "$@" >"$dir/out" 2>"$dir/err"; local rc=$?
  if [ $rc -ne "$code" ]; then bad "exit $rc (want $code): $*"; cat "$dir/err"; return; fi
  if [ -n "$pattern" ] && ! grep -q -- "$pattern" "$dir/err"; then bad "stderr lacks '$pattern': $*"; cat "$dir/err"; return; fi
  ok
}
