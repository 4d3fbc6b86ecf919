#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), one after the other, and stops at the
# first crash, saying which target crashed and where libFuzzer saved the input.
#
#   fuzz/run.sh [SECONDS] [TARGET...]      (from anywhere; needs nightly and cargo-fuzz)
#
# New corpus entries go to fuzz/work/<target>/ (ignored by git); the committed seeds in
# fuzz/corpus/<target>/ are read, never written. Crashes land in fuzz/artifacts/<target>/.
# Each target's last libFuzzer lines (executions, cov, ft) are kept in fuzz/work/<target>.log.
set -euo pipefail

seconds="${1:-60}"
shift || true
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# The product crates forbid unsafe code, so AddressSanitizer would find nothing that a panic
# does not already report; without it the build is faster and each run does several times
# more executions. cargo-fuzz builds with debug assertions (overflow checks included) on.
flags=(--sanitizer none)

cargo +nightly fuzz build "${flags[@]}"

for target in "${targets[@]}"; do
    mkdir -p "fuzz/work/$target" "fuzz/corpus/$target"
    log="fuzz/work/$target.log"
    echo "== $target: ${seconds}s"
    if ! cargo +nightly fuzz run "${flags[@]}" "$target" \
        "fuzz/work/$target" "fuzz/corpus/$target" \
        -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        echo "!! $target CRASHED; the end of its log ($log):" >&2
        tail -n 40 "$log" >&2
        echo "!! reproduce with: cargo +nightly fuzz run ${flags[*]} $target <artifact>" >&2
        exit 1
    fi
    # The last status line, e.g. "#123456 DONE cov: 1234 ft: 5678 corp: 90/1Kb ...".
    grep -E '^#[0-9]+' "$log" | tail -n 1
    grep -E '^stat::number_of_executed_units' "$log" || true
done
echo "== no crash in ${#targets[@]} target(s), ${seconds}s each"
