"""Thin wrapper: the report lives in sagecore/bench.py (`python -m sagecore bench`).

    OPENBLAS_NUM_THREADS=1 python bench/attention_report.py [--full] [--json out.json]
"""
import sys

from sagecore.bench import main

sys.exit(main())
