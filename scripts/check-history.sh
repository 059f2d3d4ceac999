#!/usr/bin/env bash
# check-history.sh — fails, naming file and line, when a tracked file tells how
# or when the project was built rather than what the product is: numbered work
# items ("session 3", "issue 4", "stage 2", "stop 12"), borrowed or lent GPU
# machines, device time, helper sessions, and paths into the workspace around
# the repository (../shared/...), except the prompt sets the training recipe and
# the benchmarks read by default (../shared/data).  `make test` runs it first.
#
# The patterns are extended regular expressions (run as PCRE when git has it:
# the same meaning, several times faster), matched case-insensitively on every
# text file `git ls-files` lists, this file excepted.  A word that only looks
# like one of them ("staging buffer", "a GitHub issue" without a number, "the
# loop issues 12 FMAs") does not match.
set -euo pipefail
cd "$(dirname "$0")/.."

PATTERNS=(
  '\bsessions? #?[0-9]'                         # session 3, sessions 8 and 9
  '\b(this|that|earlier|previous|later|helper) sessions?\b'
  '\bof the session\b'                          # "the final code of the session"
  '\bissues? #[0-9]'                            # issue #12
  '\bissues? [0-9]+([^0-9 a-z.]|\.([^0-9]|$)|$| (and|or)\b)'  # issue 4's, (issue 6), issues 4, 6
                                                # (not "issues 12 FMAs", "issues 0.14 instructions")
  '\bstages? #?[0-9]'                           # stage 2 (the tree builder's are "the first/second stage")
  '\bstops? #[0-9]|\bstop [0-9]+\b'             # stop 12
  '\b(lent|borrowed)\b[^.]{0,40}\b(gpus?|machines?|devices?|cards?|h[12]00)\b'
  '\b(gpus?|machines?|devices?|cards?|h[12]00)\b[^.]{0,40}\b(lent|borrowed)\b'
  '\bdevice[- ](time|budget|calls?)\b'
  '\btime budget\b'
)

if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  if [ "${CI:-}" = true ]; then echo "check-history: not a git work tree (CI=true)" >&2; exit 1; fi
  echo "check-history: skipped (not a git work tree: no list of tracked files)"
  exit 0
fi

args=()
for p in "${PATTERNS[@]}"; do args+=(-e "$p"); done
self=':(exclude)scripts/check-history.sh'
mode=-E
git grep -q -P 'x' -- Makefile 2>/dev/null && mode=-P
hits=$(git grep -n -I -i "$mode" "${args[@]}" -- . "$self" || true)
# ../shared/ anywhere but ../shared/data (the prompt sets): a line naming only
# ../shared/data is fine, one that also names another ../shared/ path is not.
shared=$(git grep -n -I -F '../shared' -- . "$self" |
         awk '{ s = $0; gsub(/\.\.\/shared\/data([^A-Za-z0-9_.-]|$)/, "", s); if (s ~ /\.\.\/shared/) print }' || true)
all=$(printf '%s\n%s\n' "$hits" "$shared" | sed '/^$/d' | sort -t: -k1,1 -k2,2n -u)
if [ -n "$all" ]; then
  printf '%s\n' "$all" | sed 's/^/check-history: /' >&2
  echo "check-history: $(printf '%s\n' "$all" | wc -l) line(s) tell how or when the project was built; say what the product does instead" >&2
  exit 1
fi
echo "check-history: no tracked file tells the project's history"
