#!/bin/bash
# One target after another, 10 minutes each, at nice 5 (the numbers in benchmarks/FUZZ.md).
cd "$(dirname "$0")/../.."
for t in ${TARGETS:-photo eval weights raw resume}; do
  nice -n 5 python scripts/fuzz.py "$t" --minutes "${MINUTES:-10}" --out benchmarks/fuzz/crashes \
    > "benchmarks/fuzz/$t.json" 2> "benchmarks/fuzz/$t.log"
done
