"""Segment your own images: the same as ``fsa-seg predict`` (see ``--help``).

    python tools/predict.py [INPUT ...] [--vocab "sky; tree; house, building"] [--config NAME]
                            [--out-dir DIR] [--device cuda] [--random-weights] ...
"""
import importlib.util
import os
import sys

if importlib.util.find_spec('fsa_seg') is None:  # running from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fsa_seg.cli import predict_main  # noqa: E402

if __name__ == '__main__':
    sys.exit(predict_main(prog='tools/predict.py'))
