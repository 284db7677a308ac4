# ProxyCLIP: CLIP values under a vision foundation model's attention (the VFM comes from a
# configs/_base_/proxies/ base).
model = dict(type='ProxyCLIP', templates='openai_imagenet', logit_scale=40.0, beta=1.2, gamma=3.0)
