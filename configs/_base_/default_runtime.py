# Runtime shared by every evaluation config (mmseg 1.x conventions; no training loop).
default_scope = 'mmseg'
custom_imports = dict(imports=['fsa_seg'], allow_failed_imports=False)
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
vis_backends = [dict(type='LocalVisBackend')]
# No fixed name: each Runner gets its own visualizer, even several in one process.
visualizer = dict(type='SegLocalVisualizer', vis_backends=vis_backends, alpha=0.6)
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=-1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    # Draws the images of every rank with --show-dir (fsa_seg/engine/hooks.py).
    visualization=dict(type='DistSegVisualizationHook', draw=False, interval=1),
)
test_cfg = dict(type='TestLoop')
# Frozen models: no DistributedDataParallel in multi-process evaluation (fsa_seg/engine).
model_wrapper_cfg = dict(type='InferenceWrapper')
