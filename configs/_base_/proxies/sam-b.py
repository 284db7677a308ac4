# SAM ViT-B image encoder through timm.
vfm = dict(type='TimmVFM', name='sam_vitb')
