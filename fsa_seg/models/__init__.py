from . import backbones, plugins, postprocess, segmentors, vfm  # noqa: F401  (register into mmseg.registry)
