"""Latency, memory and end-to-end benchmarks, variants side by side in one run: the same command
as ``python -m fsa_seg.analysis`` (``--help``; the library is :mod:`fsa_seg.analysis`).

    python tools/analysis/benchmark.py plugin --device cuda --n 1764 4096 --dtype fp16 fp32
    python tools/analysis/benchmark.py config CONFIG --random-weights
    python tools/analysis/benchmark.py proxyclip --device cuda --precision fp16
    python tools/analysis/benchmark.py text --vocab voc21
    python tools/analysis/benchmark.py e2e --device cuda --random-weights
"""
import importlib.util
import os
import sys

if importlib.util.find_spec('fsa_seg') is None:  # running from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from fsa_seg.analysis.cli import main  # noqa: E402

if __name__ == '__main__':
    main(prog='tools/analysis/benchmark.py')
