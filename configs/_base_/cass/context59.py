# CASS's protocol on PASCAL Context 59 (its configs/cfg_context59.py) where it differs from ours.
_base_ = ['../datasets/context59.py']

protocol = dict(
    prob_thd=0.0, test_cfg=dict(mode='slide', crop_size=(224, 224), stride=(112, 112)),
    global_semantics_weight=0.25, mean_vector_weight=0.04, h_threshold=0.09,
    scale_singular_values=True, whole_image_global=True,
)
