#!/usr/bin/env bash
# Full benches, one at a time under the torch lock; outputs to /tmp/bench-out/<name>
set -x
cd /work/main
B=/tmp/bench-out; mkdir -p $B
P=/work/main/.venv/bin/python
for what in "$@"; do
case $what in
forgetting) flock /tmp/torch.lock $P -m bench.forgetting --methods ctd+fila ctd+lora ihl+fila npo+fila gd+fila ga+fila > $B/forgetting.stdout 2> $B/forgetting.stderr ;;
stream) flock /tmp/torch.lock $P -m bench.stream > $B/stream.stdout 2> $B/stream.stderr ;;
speed-new) flock /tmp/torch.lock $P -m bench.speed --sections job --out $B/speed-new > $B/speed-new.stdout 2> $B/speed-new.stderr ;;
speed-old) (cd /tmp/old-5196769 && PYTHONPATH=. flock /tmp/torch.lock $P -m bench.speed --sections job --out $B/speed-old > $B/speed-old.stdout 2> $B/speed-old.stderr) ;;
esac
echo "$what rc=$? $(date)" >> $B/log
done
