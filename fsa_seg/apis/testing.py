"""Library code behind ``tools/test.py``: config set-up, data checks, evaluation, JSON results."""
import json
import logging
import os
import os.path as osp
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.runner import Runner

from ..datasets import check_split_size
from .configs import ConfigError, read_config

SPLIT_SIZE_HINT = 'pass --allow-partial-split (the JSON results then say "complete": false)'
# What a config may carry besides testing (mmseg's dataset and schedule bases set them): a test
# run drops them, since mmengine's Runner insists that each of its loops be complete.
TRAIN_AND_VAL_PARTS = ('train_dataloader', 'train_cfg', 'optim_wrapper', 'param_scheduler',
                       'auto_scale_lr', 'val_dataloader', 'val_cfg', 'val_evaluator')


class DatasetError(RuntimeError):
    """A test dataset that is missing, empty, incomplete or inconsistent."""


def load_test_config(config: Union[str, os.PathLike], cfg_options: Optional[dict] = None,
                     work_dir: Optional[str] = None, launcher: str = 'none',
                     show_dir: Optional[str] = None) -> Config:
    """The config (a file, or a config name as :func:`~fsa_seg.apis.resolve_config` finds it)
    set up for mmengine's test loop."""
    cfg = read_config(config, cfg_options)
    keep_test_parts(cfg)
    cfg.launcher = launcher
    cfg.work_dir = work_dir or cfg.get('work_dir') or osp.join(
        './work_dirs', Path(cfg.filename).stem)
    if show_dir:
        enable_visualization(cfg, show_dir)
    return cfg


def keep_test_parts(cfg: Config) -> None:
    """Only what a test run needs, so that configs mixing in mmseg's own dataset or schedule
    bases run as they are: no training or validation parts, a test loop, the inference wrapper
    for frozen models, and mmseg's IoUMetric kept per class (the same metrics)."""
    for key in TRAIN_AND_VAL_PARTS:
        cfg[key] = None
    cfg.setdefault('test_cfg', dict(type='TestLoop'))
    cfg.setdefault('model_wrapper_cfg', dict(type='InferenceWrapper'))
    evaluator = cfg.get('test_evaluator')
    if isinstance(evaluator, dict) and evaluator.get('type', '').split('.')[-1] == 'IoUMetric':
        evaluator['type'] = 'PerClassIoUMetric'


VISUALIZATION_HOOKS = ('SegVisualizationHook', 'DistSegVisualizationHook')


def enable_visualization(cfg: Config, show_dir: str) -> None:
    """Draw prediction beside ground truth for every image, of every rank, through mmseg's
    visualizer."""
    hook = cfg.default_hooks.get('visualization')
    if hook is None or hook.get('type', '').split('.')[-1] not in VISUALIZATION_HOOKS:
        raise ConfigError(f'{cfg.filename}: --show-dir needs default_hooks.visualization of '
                          'type SegVisualizationHook (see configs/_base_/default_runtime.py)')
    # mmseg's hook draws rank 0's images only; ours gathers every rank's first.
    hook.update(type='DistSegVisualizationHook', draw=True, interval=1)
    cfg.visualizer.save_dir = show_dir
    cfg.visualizer.vis_backends = [dict(type='LocalVisBackend')]


def init_cpu_processes(cfg: Config) -> None:
    """mmengine's pytorch launcher needs CUDA; without GPUs, join torchrun's processes with the
    gloo backend here (mmengine then finds the process group initialised and uses it)."""
    if cfg.launcher == 'none' or torch.cuda.is_available() or dist.is_initialized():
        return
    dist.init_process_group(backend='gloo')


def leave_process_group(wait: bool) -> None:
    """Destroy the process group before the interpreter exits: gloo's threads still alive at
    exit abort the process ("terminate called without an active exception", SIGABRT), which
    made a finished run fail at random. ``wait``: first let every rank finish its collectives
    (not after an error, where the other ranks may never arrive)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if wait:
        dist.barrier()
    dist.destroy_process_group()


def check_dataset_folder(cfg: Config) -> None:
    """A missing dataset is a clear error that says where the data was expected."""
    dataset = cfg.test_dataloader.dataset
    root = dataset.get('data_root', '')
    image_dir = osp.join(root, dataset.get('data_prefix', {}).get('img_path', ''))
    if not osp.isdir(image_dir):
        raise DatasetError(
            f'{dataset.type}: image folder {osp.abspath(image_dir)} not found. Prepare the '
            f'dataset in mmseg\'s layout under {osp.abspath(root) or "data/"} as described in '
            'data/README.md, or point the config at it with '
            '--cfg-options test_dataloader.dataset.data_root=/path/to/dataset')


def check_dataset_size(cfg: Config, num_images: int, allow_partial: bool) -> bool:
    """True if the dataset has as many images as its official split; otherwise an error, or
    a warning with ``allow_partial``."""
    expected = cfg.get('split_size')
    problem = None if expected is None else check_split_size(
        num_images, expected, cfg.test_dataloader.dataset.type)
    if problem is None:
        return True
    if not allow_partial:
        raise DatasetError(f'{problem} To evaluate anyway, {SPLIT_SIZE_HINT}.')
    print_log(f'WARNING: {problem}', logger='current', level=logging.WARNING)
    return False


def evaluate(cfg: Config, out: Optional[str] = None, allow_partial: bool = False) -> dict:
    """Run mmengine's test loop; write the metrics as JSON to ``out`` if given."""
    check_dataset_folder(cfg)
    init_cpu_processes(cfg)
    try:
        runner = Runner.from_cfg(cfg)
        complete = check_dataset_size(cfg, len(runner.test_dataloader.dataset), allow_partial)
        metrics = runner.test()
        if out and runner.rank == 0:
            write_results(out, cfg, metrics, runner.test_evaluator.metrics, complete)
    except BaseException:
        leave_process_group(wait=False)
        raise
    leave_process_group(wait=True)
    return metrics


def write_results(path: str, cfg: Config, metrics: dict, evaluators: Sequence,
                  complete: bool) -> None:
    results = dict(config=osp.basename(cfg.filename or ''), complete=complete,
                   metrics={k: float(v) for k, v in metrics.items()})
    for evaluator in evaluators:
        if hasattr(evaluator, 'per_class'):
            results.update(num_images=evaluator.num_images, per_class=evaluator.per_class)
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as handle:
        json.dump(results, handle, indent=2)
    print_log(f'results written to {path}', logger='current')
