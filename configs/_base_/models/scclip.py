# SC-CLIP (arXiv 2411.15869): outlier tokens repaired, tokens aggregated by intermediate-layer
# similarities, the last block's attention path applied to them and to a multi-level sum
# (fsa_seg/models/segmentors/scclip.py). Layer indices: configs/_base_/scclip/<backbone>.py;
# per-benchmark settings: configs/_base_/scclip/<benchmark>.py.
model = dict(type='SCCLIP', templates='openai_imagenet', logit_scale=40.0)
