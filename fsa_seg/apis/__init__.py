from .configs import DEFAULT_CONFIG, ConfigNotFoundError, list_configs, resolve_config
from .downloads import WeightsUnavailableError
from .inference import ImageReadError, SegmentationResult, init_segmentor, load_image, segment
from .predict import predict_files
from .testing import evaluate, load_test_config

__all__ = [
    'DEFAULT_CONFIG', 'ConfigNotFoundError', 'list_configs', 'resolve_config',
    'WeightsUnavailableError', 'ImageReadError', 'SegmentationResult', 'init_segmentor',
    'load_image', 'segment', 'predict_files', 'evaluate', 'load_test_config'
]
