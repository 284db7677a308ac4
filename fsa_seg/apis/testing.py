"""Library code behind ``fsa-seg test`` / ``tools/test.py``: config set-up, data checks,
evaluation, JSON results."""
import json
import logging
import os
import os.path as osp
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.runner import Runner

from ..datasets import (
    DatasetError,
    ExplainedPipeline,
    SplitCount,
    build_lazily,
    check_files,
    check_layout,
    check_split_size,
    selected_positions,
)
from ..evaluation.journal import (
    Journal,
    Resumption,
    journal_files,
    journal_header,
    load_journal,
)
from ..evaluation.metrics import BAD_ANNOTATION_POLICIES
from ..models.cuda_graphs import graph_capture_failures
from ..models.text import load_vocabulary
from .configs import (
    ConfigError,
    explained_config_errors,
    has_random_weights,
    read_config,
    trust_checkpoints,
    use_cuda_graphs,
    use_precision,
    use_random_weights,
)

__all__ = ['DatasetError', 'load_test_config', 'evaluate', 'write_results']

SPLIT_SIZE_HINT = 'pass --allow-partial-split (the JSON results then say "complete": false)'
# What a config may carry besides testing (mmseg's dataset and schedule bases set them): a test
# run drops them, since mmengine's Runner insists that each of its loops be complete.
TRAIN_AND_VAL_PARTS = ('train_dataloader', 'train_cfg', 'optim_wrapper', 'param_scheduler',
                       'auto_scale_lr', 'val_dataloader', 'val_cfg', 'val_evaluator')
GRAPHS_NOTE = ('crop batches are replayed from CUDA graphs, captured once per batch shape (the '
               'same outputs as eager runs; --no-cuda-graphs runs them eagerly)')
VISUALIZATION_HOOKS = ('SegVisualizationHook', 'DistSegVisualizationHook')
# Distributions whose versions a result depends on (the first installed of each group).
LIBRARIES = (('torch',), ('torchvision',), ('open_clip_torch',), ('timm',), ('mmengine',),
             ('mmcv', 'mmcv-lite'), ('mmsegmentation',))


def load_test_config(config: Union[str, os.PathLike], cfg_options: Optional[dict] = None,
                     work_dir: Optional[str] = None, launcher: str = 'none',
                     show_dir: Optional[str] = None,
                     on_bad_annotation: str = 'error', random_weights: bool = False,
                     trust_checkpoint: bool = False, precision: Optional[str] = None,
                     cuda_graphs: Union[bool, str, None] = 'auto') -> Config:
    """The config (a file, or a config name as :func:`~fsa_seg.apis.resolve_config` finds it)
    set up for mmengine's test loop.

    Args:
        on_bad_annotation: ``'error'`` or ``'warn'`` (see
            :class:`~fsa_seg.evaluation.PerClassIoUMetric`).
        random_weights: build every component with random weights (pipeline checks only;
            the numbers mean nothing). With random weights anywhere, ``randomness.seed``
            defaults to 0 so that two runs (and every process of one) build the same model.
        trust_checkpoint: unpickle local checkpoint files fully (see fsa_seg.models.weights).
        precision: ``'fp32'``, ``'fp16'`` or ``'bf16'`` for the whole model (None: the
            config's, fp32 unless it says otherwise).
        cuda_graphs: replay crop batches from CUDA graphs (the segmentor's ``cuda_graphs``),
            True or False; None: as the config says; ``'auto'``: the config's
            ``model.cuda_graphs`` where it sets one, else on where
            :func:`~fsa_seg.apis.configs.graphs_pay_off` on this machine.
    """
    cfg = read_config(config, cfg_options)
    check_test_parts(cfg)
    if precision is not None:
        use_precision(cfg.model, precision)
    with explained_config_errors(cfg.filename):
        use_cuda_graphs(cfg.model, cuda_graphs, device=None)
    if trust_checkpoint:
        trust_checkpoints(cfg.model)
    if random_weights:
        use_random_weights(cfg.model)
    if has_random_weights(cfg):
        randomness = dict(cfg.get('randomness') or {})
        if randomness.get('seed') is None:
            randomness['seed'] = 0
        cfg.randomness = randomness
    keep_test_parts(cfg)
    cfg.launcher = launcher
    cfg.work_dir = work_dir or cfg.get('work_dir') or osp.join(
        './work_dirs', Path(cfg.filename).stem)
    if show_dir:
        enable_visualization(cfg, show_dir)
    set_bad_annotation_policy(cfg, on_bad_annotation)
    return cfg


def check_test_parts(cfg: Config) -> None:
    """A model and a dataset to evaluate it on, before anything reads them: a dataset config
    (``configs/_base_/datasets/``) or another partial config is refused in one line."""
    if not cfg.get('model'):
        raise ConfigError(f'{cfg.filename}: no model to evaluate (a dataset or other partial '
                          'config? give a config of a model on a benchmark: fsa-seg configs '
                          'lists them)')
    if not (cfg.get('test_dataloader') or {}).get('dataset'):
        raise ConfigError(f'{cfg.filename}: no test_dataloader.dataset to evaluate on')


def keep_test_parts(cfg: Config) -> None:
    """Only what a test run needs, so that configs mixing in mmseg's own dataset or schedule
    bases run as they are: no training or validation parts, a test loop, the inference wrapper
    for frozen models, and mmseg's IoUMetric kept per class (the same metrics)."""
    for key in TRAIN_AND_VAL_PARTS:
        cfg[key] = None
    cfg.setdefault('test_cfg', dict(type='TestLoop'))
    cfg.setdefault('model_wrapper_cfg', dict(type='InferenceWrapper'))
    for evaluator in _evaluators(cfg):
        if evaluator.get('type', '').split('.')[-1] == 'IoUMetric':
            evaluator['type'] = 'PerClassIoUMetric'


def _evaluators(cfg: Config) -> list:
    evaluators = cfg.get('test_evaluator') or []
    return [e for e in (evaluators if isinstance(evaluators, list) else [evaluators])
            if isinstance(e, dict)]


def _per_class_metrics(cfg: Config) -> list:
    return [e for e in _evaluators(cfg) if e.get('type', '').split('.')[-1] == 'PerClassIoUMetric']


def set_bad_annotation_policy(cfg: Config, policy: str) -> None:
    if policy not in BAD_ANNOTATION_POLICIES:
        raise ValueError(f'on_bad_annotation must be one of {BAD_ANNOTATION_POLICIES}')
    for evaluator in _per_class_metrics(cfg):
        evaluator['on_bad_annotation'] = policy


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


# ---------------------------------------------------------------------------------- checks
def file_in_the_way(path: Path) -> Optional[Path]:
    """The file that stands where a folder of ``path`` should be, if one does (creating the
    folders would then fail with a misleading 'File exists' or 'Not a directory')."""
    nearest = next(parent for parent in Path(path).parents if parent.exists())
    return None if nearest.is_dir() else nearest


def check_writable(folder: str, what: str) -> None:
    """Create ``folder`` if needed and prove it writable, before any work."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix='.fsa_seg_write_test_'):
            pass
    except OSError as error:
        raise ConfigError(f'{what} {osp.abspath(folder)} cannot be written: '
                          f'{error.strerror or error}') from error


def check_outputs(cfg: Config, out: Optional[str]) -> None:
    check_writable(cfg.work_dir, '--work-dir')
    hook = (cfg.get('default_hooks') or {}).get('visualization') or {}
    save_dir = (cfg.get('visualizer') or {}).get('save_dir')
    if hook.get('draw') and save_dir:
        check_writable(save_dir, '--show-dir')
    if out:
        if not out.endswith('.json') or osp.isdir(out):
            raise ConfigError(f'--out {out}: give a .json file to write the results to')
        check_writable(osp.dirname(osp.abspath(out)), 'the folder of --out')


def check_launcher(cfg: Config) -> None:
    if cfg.launcher == 'pytorch' and 'RANK' not in os.environ:
        raise ConfigError('--launcher pytorch runs under torchrun only; start several '
                          'processes with fsa-seg dist-test CONFIG NUM_PROCS (or '
                          'tools/dist_test.sh)')


def check_dataset(cfg: Config) -> SplitCount:
    """Before the run: the dataset's folder, split and files exist, its ``indices`` select
    some of its images, and the model segments its classes. Returns how many images it lists
    and how many of them are evaluated."""
    dataset_cfg = cfg.test_dataloader.dataset
    check_layout(dataset_cfg)
    with explained_config_errors(f'{cfg.filename}: test_dataloader.dataset'):
        dataset = build_lazily(dataset_cfg, cfg.get('default_scope') or 'mmseg')
        count = check_files(dataset, dataset_cfg.get('indices'))
    check_classes(cfg, dataset.metainfo.get('classes') or (), type(dataset).__name__)
    return count


def check_classes(cfg: Config, classes: Sequence[str], dataset_name: str) -> None:
    """The model segments as many classes as the dataset scores: mmseg's metric counts the
    prediction i as the dataset's class i and drops those past its classes without a word."""
    vocabulary = cfg.model.get('vocabulary')
    if vocabulary is None or not classes:
        return
    with explained_config_errors(cfg.filename):
        count = len(load_vocabulary(vocabulary))
    if count != len(classes):
        described = f'{vocabulary!r}' if isinstance(vocabulary, str) else 'a list'
        raise ConfigError(
            f'{cfg.filename}: the model segments {count} classes (model.vocabulary: '
            f'{described}) but {dataset_name} scores {len(classes)} ({", ".join(classes[:3])}, '
            '...): the numbers would mean nothing; give the model the vocabulary of the '
            "dataset, or the dataset of the model's vocabulary")


def check_dataset_size(cfg: Config, count: SplitCount, allow_partial: bool) -> bool:
    """True if the dataset lists as many images as its official split and all of them are
    evaluated (no ``indices`` leave any out); otherwise an error, or a warning with
    ``allow_partial``."""
    expected = cfg.get('split_size')
    problem = None if expected is None else check_split_size(
        count.listed, expected, cfg.test_dataloader.dataset.type, evaluated=count.evaluated)
    if problem is None:
        return True
    if not allow_partial:
        raise DatasetError(f'{problem} To evaluate anyway, {SPLIT_SIZE_HINT}.')
    print_log(f'WARNING: {problem}', logger='current', level=logging.WARNING)
    return False


# ---------------------------------------------------------------------------------- running
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


def evaluate(cfg: Config, out: Optional[str] = None, allow_partial: bool = False,
             resume: bool = False) -> dict:
    """Check the outputs and the dataset, run mmengine's test loop, write the metrics and the
    settings that produced them as JSON to ``out`` if given. Every scored image is journaled in
    the work dir; ``resume``: score only the images that the journal lacks."""
    check_launcher(cfg)
    check_outputs(cfg, out)
    complete = check_dataset_size(cfg, check_dataset(cfg), allow_partial)
    journal = prepare_journal(cfg, resume)
    init_cpu_processes(cfg)
    try:
        with explained_config_errors(cfg.filename):
            runner = Runner.from_cfg(cfg)
            dataset = runner.test_dataloader.dataset
        attach_journal(runner, journal)
        if resume and dist.is_initialized():
            dist.barrier()  # every process has read the journal before any writes to it
        if has_random_weights(cfg):  # in the run's log, next to its numbers
            from .inference import RANDOM_WEIGHTS_WARNING
            print_log(RANDOM_WEIGHTS_WARNING, logger='current', level=logging.WARNING)
        if cfg.model.get('cuda_graphs') and torch.cuda.is_available():
            print_log(GRAPHS_NOTE, logger='current')
        dataset.pipeline = ExplainedPipeline(dataset.pipeline)
        metrics = runner.test()
        if out and runner.rank == 0:
            write_results(out, cfg, metrics, runner.test_evaluator.metrics, complete,
                          seed=runner.seed, model=runner.model)
    except BaseException:
        say_how_to_resume(journal)
        leave_process_group(wait=False)
        raise
    leave_process_group(wait=True)
    return metrics


# ---------------------------------------------------------------------------------- journal
def _journaled_metric(cfg: Config) -> Optional[dict]:
    """The config's evaluator that journals its images: its one PerClassIoUMetric."""
    ours = _per_class_metrics(cfg)
    return ours[0] if len(ours) == 1 else None


def journal_settings(cfg: Config) -> dict:
    """What the numbers of the scored images depend on (:func:`run_settings` and the
    evaluator's settings), but not the number of processes nor the bad-annotation policy, which
    change none of them (a good annotation scores the same under either; a resumed run scores
    the images of bad ones again, under its own policy)."""
    settings = run_settings(cfg, (cfg.get('randomness') or {}).get('seed'))
    del settings['launcher'], settings['world_size']
    settings['model'].pop('cuda_graphs', None)  # replays compute what eager runs compute
    settings['evaluator'] = {k: v for k, v in _journaled_metric(cfg).items()
                             if k != 'on_bad_annotation'}
    return settings


def prepare_journal(cfg: Config, resume: bool) -> Optional[Journal]:
    """The run's journal in the work dir (None without a PerClassIoUMetric to keep it); with
    ``resume``, the dataset is left without the images whose results it holds under the same
    settings and takes (see :func:`skip_scored_images`)."""
    if _journaled_metric(cfg) is None:
        if resume:
            raise ConfigError(f'{cfg.filename}: --resume needs test_evaluator to be one '
                              'IoUMetric (or PerClassIoUMetric), whose images are journaled')
        return None
    header = journal_header(journal_settings(cfg))
    earlier = skip_scored_images(cfg, load_journal(cfg.work_dir, header)) if resume else None
    return Journal(cfg.work_dir, header, earlier)


def attach_journal(runner: Runner, journal: Optional[Journal]) -> None:
    """Give the runner's PerClassIoUMetric the journal (its test loop is built here)."""
    if journal is None:
        return
    from ..evaluation import PerClassIoUMetric
    metric, = (m for m in runner.test_loop.evaluator.metrics if isinstance(m, PerClassIoUMetric))
    metric.journal = journal


def skip_scored_images(cfg: Config, journaled: dict) -> dict:
    """Restrict the dataset (its ``indices``) to the images whose results the journal entries
    ``journaled`` do not give (see :class:`~fsa_seg.evaluation.journal.Resumption`), and return
    the entries taken. At least its last image is scored again, since mmengine's test loop needs
    one."""
    from mmengine.dataset import BaseDataset
    dataset_cfg = cfg.test_dataloader.dataset
    dataset = build_lazily({k: v for k, v in dataset_cfg.items() if k != 'indices'},
                           cfg.get('default_scope') or 'mmseg')
    if not isinstance(dataset, BaseDataset):
        raise ConfigError(f'{cfg.filename}: --resume needs a dataset that lists its images '
                          f'(an mmengine BaseDataset), not {type(dataset).__name__}')
    dataset.full_init()
    positions = selected_positions(dataset_cfg.get('indices'), len(dataset))
    # the whole dataset's images, not this process's shard: rank 0 merges every shard's results
    # with the entries taken
    plan = Resumption(journaled, [dataset.get_data_info(i).get('img_path') for i in positions])
    if _first_process():
        for message in plan.messages(cfg.work_dir):
            print_log(message, logger='current')
    # all scored: the last image again, as mmengine's test loop needs one to run
    dataset_cfg.indices = [positions[i] for i in plan.to_score] or positions[-1:]
    return plan.earlier


def _first_process() -> bool:
    """Rank 0, also before the process group exists (as torchrun, slurm or mpirun say)."""
    rank = next((os.environ[key] for key in ('RANK', 'SLURM_PROCID', 'OMPI_COMM_WORLD_RANK')
                 if key in os.environ), '0')
    return int(rank) == 0


def say_how_to_resume(journal: Optional[Journal]) -> None:
    """After a stop, where the scored images are and how to go on."""
    if journal is not None and journal_files(journal.folder, journal.header) and _first_process():
        print_log(f'the images scored before the stop are kept in {osp.abspath(journal.folder)}:'
                  ' run again with --resume to score only the others', logger='current',
                  level=logging.WARNING)


# ---------------------------------------------------------------------------------- results
def library_versions() -> dict:
    from ..version import __version__
    versions = {'fsa-seg': __version__}
    for names in LIBRARIES:
        for name in names:
            try:
                versions[name] = metadata.version(name)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def parameter_dtypes(model: Optional[torch.nn.Module]) -> dict:
    """The dtype each part of the model computes in (its first parameter's), by part name."""
    model = getattr(model, 'module', model)  # unwrapped
    if model is None:
        return {}
    dtypes = {}
    for name, part in model.named_children():
        parameter = next(part.parameters(), None)
        if parameter is not None:
            dtypes[name] = str(parameter.dtype)
    return dtypes


def run_settings(cfg: Config, seed: Optional[int],
                 model: Optional[torch.nn.Module] = None) -> dict:
    """What a number depends on: the model's config as built (plug-in and its λ, sliding window,
    vocabulary, threshold, weights …) and the dtypes it ran in, the dataset and its pipeline,
    the seed, the processes and the library versions."""
    dataset = cfg.test_dataloader.dataset
    return dict(
        model=cfg.model.to_dict(), model_dtypes=parameter_dtypes(model),
        dataset={key: dataset.get(key) for key in ('type', 'data_root', 'data_prefix',
                                                   'ann_file', 'reduce_zero_label')},
        test_pipeline=dataset.get('pipeline'),
        seed=seed, randomness=cfg.get('randomness'),
        launcher=cfg.launcher,
        world_size=dist.get_world_size() if dist.is_initialized() else 1,
        device='cuda' if torch.cuda.is_available() else 'cpu',
        versions=library_versions())


def write_results(path: str, cfg: Config, metrics: dict, evaluators: Sequence,
                  complete: bool, seed: Optional[int] = None,
                  model: Optional[torch.nn.Module] = None) -> None:
    results = dict(config=osp.basename(cfg.filename or ''), complete=complete,
                   random_weights=has_random_weights(cfg),
                   metrics={k: float(v) for k, v in metrics.items()})
    for evaluator in evaluators:
        if hasattr(evaluator, 'per_class'):
            results.update(num_images=evaluator.num_images,
                           resumed_images=evaluator.num_resumed, per_class=evaluator.per_class,
                           bad_annotations=dict(policy=evaluator.on_bad_annotation,
                                                count=len(evaluator.annotation_problems),
                                                files=evaluator.annotation_problems),
                           undefined_predictions=dict(
                               count=len(evaluator.undefined_predictions),
                               files=evaluator.undefined_predictions))
    results['settings'] = run_settings(cfg, seed, model)
    failures = graph_capture_failures(model)
    if failures is not None:  # replays asked for: the crops this process could not capture
        results['cuda_graph_failures'] = failures
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w', encoding='utf-8') as handle:
        json.dump(results, handle, indent=2, default=str)
    print_log(f'results written to {path}', logger='current')
