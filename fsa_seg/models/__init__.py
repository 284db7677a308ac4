from . import backbones, data_preprocessor, plugins, postprocess, segmentors, vfm  # noqa: F401  (register into mmseg.registry)
