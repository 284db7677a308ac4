# MaskCLIP: a training-free CLIP segmentor (see fsa_seg/models/segmentors/clip_baselines.py).
model = dict(type='MaskCLIP', templates='openai_imagenet', logit_scale=40.0)
