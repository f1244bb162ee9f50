#!/usr/bin/env bash
# Many small input files into Parquet and Delta: time of the first run (every file new) and of a
# second run (nothing new), and the files and table versions written.
#
#   bench/small_files.sh FILES ROWS_PER_FILE [SEALTRAIL_BINARY] [WORK_DIR]
#
# For example `bench/small_files.sh 20000 5 target/release/sealtrail target/bench-small-files` (build it with
# `cargo build --profile bench -p sealtrail`). The work folder is emptied first.
set -euo pipefail
files=${1:?number of files}
rows=${2:?records per file}
bin=${3:-target/release/sealtrail}
work=${4:-target/bench-small-files}
bin=$(realpath "$bin")
rm -rf "$work"
mkdir -p "$work/in"
python3 - "$work/in" "$files" "$rows" <<'EOF'
import random, sys
out, files, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
random.seed(1)
for f in range(files):
    with open(f"{out}/orders_{f:06d}.csv", "w") as fh:
        fh.write("order_id,amount,desk\n")
        for r in range(rows):
            fh.write(f"{f * rows + r},{random.randint(1, 99999)}.{random.randint(0, 99):02d},D{random.randint(1, 9)}\n")
EOF
cat > "$work/orders.yaml" <<'EOF'
version: 1
pipeline: orders
sources:
  orders:
    csv: { path: in/*.csv, incremental: true }
    columns:
      - { name: order_id, type: int64, required: true }
      - { name: amount, type: "decimal(12,2)" }
      - { name: desk, class: none }
    checks:
      - { rule: unique, column: order_id, reason: duplicate_order }
sinks:
  lake: { from: orders, audience: internal, delta: { path: out/lake } }
  files: { from: orders, audience: internal, parquet: { path: out/files } }
quarantine:
  parquet: { path: out/quarantine }
EOF
cd "$work"
timed() {
    local start end ms
    start=$(date +%s%N)
    /usr/bin/time -f "%U %S %M" -o time.txt "$bin" run orders.yaml > run.txt 2> err.txt
    end=$(date +%s%N)
    ms=$(( (end - start) / 1000000 ))
    read -r user sys rss < time.txt
    echo "$1: $((ms / 1000)).$(printf %03d $((ms % 1000))) s wall, CPU ${user} s user + ${sys} s system, peak RSS $((rss / 1024)) MiB; $(grep 'rows in' run.txt | xargs)"
}
timed "first run ($files files x $rows records)"
timed "second run (nothing new)"
echo "Parquet files: $(ls out/files | wc -l); Delta log entries: $(ls out/lake/_delta_log/*.json | wc -l)"
