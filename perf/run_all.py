"""Every CPU benchmark in turn, then the RESULT lines together (the GPU one runs on its own:
gpu_throughput.py, on a machine with a GPU).

    python perf/run_all.py [--quick]

--quick: fewer repeats (a check that everything runs; the figures are then noisier).
"""

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [("relevance_cost.py", ["--repeats", "9"], ["--repeats", "3"]),
           ("rollout_cost.py", ["--repeats", "9"], ["--repeats", "3"]),
           ("many_prompts.py", ["--repeats", "7"], ["--repeats", "3"]),
           ("peak_memory.py", ["--repeats", "3"], ["--repeats", "1"]),
           ("batches.py", [], []),
           ("cli_startup.py", ["--repeats", "7"], ["--repeats", "3"])]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    results, failed = [], []
    for script, full, quick in SCRIPTS:
        out = subprocess.run([sys.executable, str(HERE / script)] + (quick if args.quick else full),
                             capture_output=True, text=True)
        sys.stdout.write(out.stdout)
        sys.stdout.flush()
        if out.returncode not in (0, 1):  # 1 = a target missed; anything else = the script broke
            failed.append(script)
            sys.stderr.write(out.stderr)
        results += [line for line in out.stdout.splitlines() if line.startswith(("RESULT", "INFO"))]
    print("\n== summary")
    print("\n".join(results))
    return 1 if failed or any("MISSED" in line for line in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
