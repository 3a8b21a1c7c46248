"""Import cost of sagecore beyond numpy, from `python -X importtime` (best of 10 runs).

python bench/importtime.py
"""
import re
import subprocess
import sys


def cumulative_us(stmt, module):
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", stmt], capture_output=True, text=True).stderr
    for line in out.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|\s*(\S+)$", line)
        if m and m.group(3) == module:
            return int(m.group(2))
    raise RuntimeError(f"{module} not in importtime output")


def main():
    runs = [cumulative_us("import numpy, sagecore", "sagecore") for _ in range(10)]
    full = [cumulative_us("import numpy, sagecore; sagecore.QuantKVCache", "sagecore") for _ in range(3)]
    print(f"import sagecore after numpy: best {min(runs) / 1000:.2f} ms, median {sorted(runs)[5] / 1000:.2f} ms")
    print(f"(first use of sagecore.QuantKVCache then loads the compiled core and the cache module)")


if __name__ == "__main__":
    main()
