# SC-CLIP (arXiv 2411.15869): outlier tokens repaired, tokens aggregated by intermediate-layer
# similarities, the last block's attention path applied to them and to a multi-level sum
# (fsa_seg/models/segmentors/scclip.py). Layer indices: configs/_base_/scclip/<backbone>.py;
# per-benchmark settings: configs/_base_/scclip/<benchmark>.py.
# clip and plugin are filled in by the leaves (backbone base; FSA leaves); they exist here so
# that a config inheriting this one can replace them with `_delete_=True`.
model = dict(type='SCCLIP', clip=dict(type='OpenCLIP'), plugin=dict(),
             templates='openai_imagenet', logit_scale=40.0)
