# SC-CLIP's protocol on COCO-Object for ViT-L/14 (its configs/cfg_coco_object.py at the first
# commit 74471da, commented there): logit_scale 40 (B/16: 55) and prob_thd 0.25 (B/16: 0.35).
_base_ = ['./coco_object.py']

protocol = dict(logit_scale=40.0, prob_thd=0.25)
