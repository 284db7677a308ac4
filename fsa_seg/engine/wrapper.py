"""Model wrapper for distributed evaluation of frozen models.

mmengine wraps a distributed model in DistributedDataParallel, which refuses modules without
trainable parameters, such as every training-free segmentor. Evaluation needs no gradient
synchronisation: each process runs its shard of the data and the metrics gather the results.
"""
from mmengine.registry import MODEL_WRAPPERS
from torch import nn


@MODEL_WRAPPERS.register_module()
class InferenceWrapper(nn.Module):
    """Holds the model as ``module`` (mmengine's wrapper convention); inference only."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def test_step(self, data):
        return self.module.test_step(data)

    def val_step(self, data):
        return self.module.val_step(data)

    def train_step(self, data, optim_wrapper):
        raise NotImplementedError('InferenceWrapper is for evaluation; training-free models '
                                  'have nothing to train')

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
