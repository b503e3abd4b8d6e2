#!/usr/bin/env bash
# Runs each fuzz target briefly (FUZZTIME, default 50000 executions).
# Corpus entries found earlier live in each package's testdata/fuzz and run
# in go test. A count, not a duration: Go 1.26's coordinator can report a
# spurious "context deadline exceeded" when a duration ends under load
# (golang/go#75804).
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-50000x}
grep -rl --include='*_test.go' '^func Fuzz' internal cmd 2>/dev/null | while read -r f; do
  pkg=./$(dirname "$f")
  for t in $(grep -o '^func Fuzz[A-Za-z0-9_]*' "$f" | cut -d' ' -f2); do
    echo "fuzz: $pkg $t ($fuzztime)"
    go test -run='^$' -fuzz="^${t}\$" -fuzztime="$fuzztime" "$pkg" >/tmp/fuzz.$$ 2>&1 || { cat /tmp/fuzz.$$; rm -f /tmp/fuzz.$$; exit 1; }
  done
done
rm -f /tmp/fuzz.$$
