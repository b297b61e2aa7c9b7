"""Run every benchmark in turn (`make bench`; `make bench-quick` passes --quick), each in its own process so
one's threads and caches do not colour the next one's timings.

    python -m bench.all [--quick]
"""

from __future__ import annotations

import subprocess
import sys

BENCHES = ("bench.forgetting", "bench.never_seen", "bench.restor", "bench.stream", "bench.speed")


def main() -> None:
    extra = sys.argv[1:]
    failed = []
    for module in BENCHES:
        print(f"== {module} {' '.join(extra)}", file=sys.stderr, flush=True)
        if subprocess.run([sys.executable, "-m", module, *extra], stdout=subprocess.DEVNULL).returncode:
            failed.append(module)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")
    print("results in bench/out/ (JSON + PNG)", file=sys.stderr)


if __name__ == "__main__":
    main()
