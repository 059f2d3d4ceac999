#!/usr/bin/env bash
# run-tests.sh BIN... — runs each unit-test binary (Check suites), then prints one
# closing line "N passed, N failed" summed over all of them (Check's own lines are kept),
# and the parts a test reported as not run on this machine (a kernel path the CPU lacks),
# counted and named, so that nothing is skipped silently.
set -u
pass=0; fail=0; failed_bins=(); not_run=()
for bin in "$@"; do
  out=$("$bin" 2>&1); rc=$?
  printf '%s\n' "$out"
  while IFS= read -r l; do not_run+=("$l"); done < <(printf '%s\n' "$out" | grep -E 'NOT RUN' | sed -E 's/ +/ /g')
  line=$(printf '%s\n' "$out" | grep -E '^[0-9]+%: Checks: ' | tail -n1)
  if [ -n "$line" ]; then
    checks=$(sed -E 's/.*Checks: ([0-9]+).*/\1/' <<<"$line")
    failures=$(sed -E 's/.*Failures: ([0-9]+).*/\1/' <<<"$line")
    errors=$(sed -E 's/.*Errors: ([0-9]+).*/\1/' <<<"$line")
    bad=$((failures + errors))
    pass=$((pass + checks - bad)); fail=$((fail + bad))
  fi
  if [ $rc -ne 0 ] || [ -z "$line" ]; then
    failed_bins+=("$bin"); [ -z "$line" ] && fail=$((fail + 1))
  fi
done
[ ${#failed_bins[@]} -gt 0 ] && echo "failing test binaries: ${failed_bins[*]}"
if [ ${#not_run[@]} -gt 0 ]; then
  echo "unit: $pass passed, $fail failed; ${#not_run[@]} not run on this machine: $(printf '%s; ' "${not_run[@]}" | sed 's/; $//')"
else
  echo "unit: $pass passed, $fail failed; 0 not run on this machine"
fi
[ ${#failed_bins[@]} -eq 0 ]
