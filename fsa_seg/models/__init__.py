from . import backbones, plugins, segmentors, vfm  # noqa: F401  (register into mmseg.registry)
