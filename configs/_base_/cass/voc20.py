# CASS's protocol on VOC20 (its configs/cfg_voc20.py) where it differs from ours.
_base_ = ['../datasets/voc20.py']

protocol = dict(
    prob_thd=0.0, test_cfg=dict(mode='slide', crop_size=(224, 224), stride=(112, 112)),
    global_semantics_weight=0.4, mean_vector_weight=0.02, h_threshold=0.10,
    scale_singular_values=False, whole_image_global=True,
)
