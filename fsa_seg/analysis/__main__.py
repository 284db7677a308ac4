"""``python -m fsa_seg.analysis``: the benchmarks of :mod:`fsa_seg.analysis.cli`."""
from .cli import main

if __name__ == '__main__':
    main(prog='python -m fsa_seg.analysis')
