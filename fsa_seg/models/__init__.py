from . import backbones, plugins, segmentors  # noqa: F401  (register into mmseg.registry)
