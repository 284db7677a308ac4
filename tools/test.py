"""Evaluate a training-free segmentor on a benchmark: the same as ``fsa-seg test`` (``--help``).

    python tools/test.py CONFIG [--work-dir DIR] [--out results.json] [--show-dir DIR]
                                [--cfg-options key=value ...] [--launcher pytorch] ...

CONFIG is a config file or a config name (``clearclip_fsa_vit-b16_voc21``: configs/**/NAME.py).
"""
import importlib.util
import os
import sys

if importlib.util.find_spec('fsa_seg') is None:  # running from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fsa_seg.cli import test_main  # noqa: E402

if __name__ == '__main__':
    sys.exit(test_main(prog='tools/test.py'))
