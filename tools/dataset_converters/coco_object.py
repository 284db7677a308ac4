"""Convert COCO-Stuff164k's raw label maps into COCO-Object label maps (81 classes): the same as
``fsa-seg convert-coco-object`` (``--help``).

Writes ``annotations/<split>/<id>_instanceTrainIds.png`` next to the raw ``<id>.png`` maps, so
the COCO-Object config reads images and labels from the COCO-Stuff164k folder. Re-running skips
maps that are up to date. See data/README.md and ``fsa_seg.datasets.converters``.

    python tools/dataset_converters/coco_object.py data/coco_stuff164k
"""
import importlib.util
import os
import sys

if importlib.util.find_spec('fsa_seg') is None:  # running from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))

from fsa_seg.cli import convert_coco_object_main  # noqa: E402

if __name__ == '__main__':
    sys.exit(convert_coco_object_main(prog='tools/dataset_converters/coco_object.py'))
