# MAE ViT-B/16 through timm; built at the slide crop size (ProxyCLIP gives it input_size).
vfm = dict(type='TimmVFM', name='mae_vitb16')
