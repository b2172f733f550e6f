"""What the box costs a run: start and tear-down of a bubblewrap box, with its supervisor,
cgroups and limits, against starting the same command bare, measured in the same run.

Run ``.venv/bin/python bench/box.py [--repeat N]`` (default 20). It prints, for ``true``
and for ``python -c pass`` (the interpreter of the box), the median and the maximum of N
starts bare (``subprocess.run``) and in the box (``run_sandboxed``, as every test command,
setup step and collection runs), and the box's cost: the difference of the medians.
Target: at most 50 ms per run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ciq.runner.box import Box, Limits, etc_copy, own_interpreter, run_env
from ciq.runner.process import run_sandboxed


def timed(fn, repeat: int) -> list[float]:
    fn()  # warm the page cache
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    python = str(own_interpreter() / "bin" / "python3")
    with tempfile.TemporaryDirectory(prefix="ciq-bench-box-") as top:
        inside, run_dir = Path(top, "box"), Path(top, "run")
        inside.mkdir()
        run_dir.mkdir()
        # As a run's box: the default limits' cgroups, the copy of /etc a worker makes.
        box = Box(inside, run_env({}, inside), Limits(4096 << 20, 512, 512 << 20),
                  etc=etc_copy(Path(top, "box")))
        box.allow_read(own_interpreter()).allow_write(inside)
        print(f"box start and tear-down, {args.repeat} runs each (ms)")
        print(f"{'command':<18} {'bare median':>12} {'box median':>11} {'box max':>8} "
              f"{'cost':>6}")
        worst = 0.0
        for label, cmd in (("true", ["/usr/bin/true"]),
                           ("python -c pass", [python, "-I", "-S", "-c", "pass"])):
            bare = timed(lambda cmd=cmd: subprocess.run(cmd, check=True), args.repeat)
            boxed = timed(lambda cmd=cmd: run_sandboxed(cmd, box, 60, 4096, run_dir),
                          args.repeat)
            cost = statistics.median(boxed) - statistics.median(bare)
            worst = max(worst, cost)
            print(f"{label:<18} {statistics.median(bare):>12.1f} "
                  f"{statistics.median(boxed):>11.1f} {max(boxed):>8.1f} {cost:>6.1f}")
        print(f"cost of the box: {worst:.1f} ms per run (target <= 50 ms): "
              f"{'ok' if worst <= 50 else 'OVER'}")
    return 0 if worst <= 50 else 1


if __name__ == "__main__":
    sys.exit(main())
