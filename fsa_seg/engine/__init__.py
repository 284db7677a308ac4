from .hooks import DistSegVisualizationHook
from .wrapper import InferenceWrapper

__all__ = ['DistSegVisualizationHook', 'InferenceWrapper']
