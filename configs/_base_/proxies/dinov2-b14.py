# DINOv2 ViT-B/14 with registers through timm.
vfm = dict(type='TimmVFM', name='dinov2_vitb14_reg')
