from .testing import evaluate, load_test_config

__all__ = ['evaluate', 'load_test_config']
from .inference import (DEFAULT_CONFIG, ConfigNotFoundError, ImageReadError,  # noqa: E402
                        SegmentationResult, WeightsUnavailableError, init_segmentor,
                        list_configs, load_image, resolve_config, segment, set_vocabulary)
from .predict import predict_files  # noqa: E402

__all__ += ['DEFAULT_CONFIG', 'ConfigNotFoundError', 'ImageReadError', 'SegmentationResult',
            'WeightsUnavailableError', 'init_segmentor', 'list_configs', 'load_image',
            'resolve_config', 'segment', 'set_vocabulary', 'predict_files']
