# ProxyCLIP: CLIP values under a vision foundation model's attention (the VFM comes from a
# configs/_base_/proxies/ base). clip, vfm and plugin are filled in by the leaves; they exist
# here so that a config inheriting this one can replace them with `_delete_=True`.
model = dict(type='ProxyCLIP', clip=dict(type='OpenCLIP'), vfm=dict(type='TimmVFM'),
             plugin=dict(), templates='openai_imagenet', logit_scale=40.0, beta=1.2, gamma=3.0)
