# SCLIP: a training-free CLIP segmentor (see fsa_seg/models/segmentors/clip_baselines.py).
# clip and plugin are filled in by the leaves (backbone base; FSA leaves); they exist here so
# that a config inheriting this one can replace them with `_delete_=True`.
model = dict(type='SCLIP', clip=dict(type='OpenCLIP'), plugin=dict(),
             templates='openai_imagenet', logit_scale=40.0)
