"""Write the leaf configs of the experiment matrix (fsa_seg/experiments.py): every baseline ×
backbone (× proxy) × benchmark, with and without FSA.

Leaves only compose bases (mmengine inheritance); run this after adding an entry and its base:

    python tools/misc/generate_configs.py [--check]
"""
import argparse
import importlib.util
import os
import sys
from pathlib import Path

if importlib.util.find_spec('fsa_seg') is None:  # running from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from fsa_seg.experiments import MATRIX  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / 'configs'


def write_leaves(configs: Path, matrix=MATRIX, check: bool = False) -> list:
    """Write the matrix's leaves under ``configs`` (only report them with ``check``); the paths
    of those that were missing or out of date."""
    stale = []
    for leaf in matrix.leaves():
        path = configs / leaf.path
        if path.is_file() and path.read_text() == leaf.text:
            continue
        stale.append(leaf.path)
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(leaf.text)
    return stale


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--check', action='store_true',
                        help='only report leaves that are missing or out of date')
    args = parser.parse_args()
    stale = write_leaves(CONFIGS, check=args.check)
    print(f'{len(stale)} leaf configs {"out of date" if args.check else "written"}')
    return 1 if args.check and stale else 0


if __name__ == '__main__':
    sys.exit(main())
