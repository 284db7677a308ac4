"""``python -m fsa_seg.cli``: the ``fsa-seg`` command (how ``fsa-seg dist-test`` starts its
processes)."""
import sys

from . import main

sys.exit(main())
