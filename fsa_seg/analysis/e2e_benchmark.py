"""End to end: images per second of ``tools/test.py``'s path, and where the time goes.

``tools/test.py`` (``fsa-seg test``) is :func:`~fsa_seg.apis.load_test_config`, mmengine's
``Runner.from_cfg`` and ``runner.test()``: the config's data pipeline and dataloader, the
segmentor's ``test_step`` (data preprocessor, windows, crops, post-processing) and the evaluator.
This benchmark runs exactly that on a generated dataset (random images and labels of a realistic
size, written to a temporary folder, read through the config's own pipeline), for each
precision asked (``model.clip.precision``; the VFM follows the CLIP's precision inside the
segmentor) with the config's plug-in and without it (the same model, the plug-in toggled).

What it measures, per variant:

* images/s of the test loop — from the start of the test epoch to the end of its last
  iteration, data loading included — over ``repeat`` timed passes after one warm-up pass, the
  variants interleaved (A B …, … B A) so that all see the same machine load; the time the loop
  waited for the dataloader; the whole ``runner.test()`` call (evaluation and hooks included);
* where the model's time goes, on the first image's batch (its windows, as ``tools/test.py``
  batches them): VFM, CLIP trunk (up to the last block), last block (the rest of
  ``crop_logits``: the last block's attention and values, the head, the cosine logits and
  their upsampling), plug-in, post-processing (class probabilities and label map) and other
  (data preprocessor, windows cut and assembled, per-image context), each the median of
  ``stage_repeat`` runs, timed by wrapping those methods of this model instance from the
  outside (CUDA events on the GPU: no synchronisation inside a run);
* against fp32 with the same plug-in state, on the same random weights (every model built from
  the same seed): the share of equal labels and the largest difference of the class
  probabilities over all pixels of all images.

It reports measurements and ratios, never verdicts.
"""
import contextlib
import functools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner
from PIL import Image

from ..apis.configs import apply_overrides, explained_config_errors, read_config
from ..apis.testing import attach_journal, load_test_config, prepare_journal
from ..models.cuda_graphs import graph_capture_failures
from ..models.text import load_vocabulary
from ..visualization import make_palette
from .benchmark import (
    DTYPES,
    PROXYCLIP_CONFIG,
    BenchmarkError,
    capture_failures,
    check_device,
    environment,
    replayed_from_graphs,
    replays_graphs,
    suggesting_random_weights,
    synchronize,
)

REFERENCE = 'fp32'
STAGES = ('VFM', 'CLIP trunk', 'last block', 'plug-in', 'post-processing', 'other')
IMAGE_FOLDER, LABEL_FOLDER = 'images', 'labels'


# ---------------------------------------------------------------------------- dataset
def make_dataset(root: Path, num_images: int, size: Tuple[int, int], num_classes: int,
                 seed: int = 0) -> None:
    """``num_images`` JPEG images of ``size`` (height, width) under ``root/images`` and PNG label
    maps under ``root/labels``: smooth random colours with noise (JPEGs of a natural size) and
    random regions of random classes, 2 % of the pixels ignored (255)."""
    rng = np.random.default_rng(seed)
    height, width = size
    for folder in (IMAGE_FOLDER, LABEL_FOLDER):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for index in range(num_images):
        coarse = rng.integers(0, 256, (height // 16 + 2, width // 16 + 2, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))
        image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / IMAGE_FOLDER / f'{index:05d}.jpg', quality=90)
        regions = rng.integers(0, num_classes, (height // 32 + 2, width // 32 + 2),
                               dtype=np.uint8)
        label = np.asarray(Image.fromarray(regions).resize((width, height), Image.NEAREST))
        label = np.where(rng.random(label.shape) < 0.02, 255, label).astype(np.uint8)
        Image.fromarray(label).save(root / LABEL_FOLDER / f'{index:05d}.png')


def generated_dataset_cfg(root: Path, class_names: Sequence[str], pipeline: list) -> dict:
    """mmseg's plain dataset over :func:`make_dataset`'s folders, read by ``pipeline``."""
    return dict(type='BaseSegDataset', data_root=str(root),
                data_prefix=dict(img_path=IMAGE_FOLDER, seg_map_path=LABEL_FOLDER),
                img_suffix='.jpg', seg_map_suffix='.png',
                metainfo=dict(classes=tuple(class_names),
                              palette=make_palette(len(class_names)).tolist()),
                pipeline=pipeline)


# ---------------------------------------------------------------------------- timing
class LoopClock(Hook):
    """Times the test loop as the runner runs it: from the start of the epoch to the end of the
    last iteration, and the time spent waiting for the dataloader between iterations. It
    synchronises CUDA after each iteration, where the evaluator (boolean indexing, ``.cpu()``)
    does already. ``collect(outputs)``, if set, receives the outputs of each iteration."""
    priority = 'LOWEST'

    def __init__(self, device: torch.device):
        self.device = device
        self.collect: Optional[Callable[[list], None]] = None
        self.loop_s = self.data_wait_s = 0.0
        self.images = 0
        self._start = self._last = 0.0

    def before_test_epoch(self, runner) -> None:
        synchronize(self.device)
        self._start = self._last = time.perf_counter()
        self.loop_s = self.data_wait_s = 0.0
        self.images = 0

    def before_test_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self.data_wait_s += time.perf_counter() - self._last

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        synchronize(self.device)
        self._last = time.perf_counter()
        self.loop_s = self._last - self._start
        self.images += len(outputs)
        if self.collect is not None:
            self.collect(outputs)


class StageClock:
    """Time spent in named stages of one model call. A stage entered again inside itself counts
    once; each record says whether it ran inside ``crop_logits`` (the stage 'crop'). On CUDA the
    marks are events, read after one synchronisation at the end (:meth:`records`)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._stack: List[str] = []
        self._marks: List[tuple] = []  # (stage, inside crop_logits, start, end)
        self.crops: List[int] = []  # crops per crop_logits call

    def reset(self) -> None:
        self._marks, self.crops = [], []

    def _mark(self):
        if self.device.type == 'cuda':
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str):
        if name in self._stack:
            yield
            return
        inside_crop = 'crop' in self._stack
        self._stack.append(name)
        start = self._mark()
        try:
            yield
        finally:
            self._marks.append((name, inside_crop, start, self._mark()))
            self._stack.pop()

    def records(self) -> List[Tuple[str, bool, float]]:
        """(stage, inside crop_logits, seconds) of every stage run since :meth:`reset`."""
        synchronize(self.device)
        if self.device.type == 'cuda':
            return [(n, c, s.elapsed_time(e) / 1e3) for n, c, s, e in self._marks]
        return [(n, c, e - s) for n, c, s, e in self._marks]


def _timed_method(clock: StageClock, stage: str, method: Callable) -> Callable:
    @functools.wraps(method)
    def timed(*args, **kwargs):
        if stage == 'crop':
            clock.crops.append(len(args[0]))
        with clock.stage(stage):
            return method(*args, **kwargs)
    return timed


def probe_points(model, plugin) -> List[tuple]:
    """(object, method name, stage) of every method the stage times wrap."""
    points = [(model, 'test_step', 'model'), (model, 'replayed_crop_logits', 'crop'),
              (model, 'class_probabilities', 'post-processing'),
              (model, 'label_map', 'post-processing'),
              (model.clip, 'forward_to_last_block', 'CLIP trunk')]
    vfm = getattr(model, 'vfm', None)
    if vfm is not None:
        points += [(vfm, name, 'VFM') for name in ('forward', 'last_block_input')
                   if hasattr(vfm, name)]
    if plugin is not None:
        points.append((plugin, 'forward', 'plug-in'))
    return points


@contextlib.contextmanager
def probed(points: Sequence[tuple], clock: StageClock):
    """The methods of ``points`` timed into ``clock`` on these instances only (instance
    attributes over the class's methods), restored on exit."""
    for owner, name, stage in points:
        setattr(owner, name, _timed_method(clock, stage, getattr(owner, name)))
    try:
        yield clock
    finally:
        for owner, name, _ in points:
            delattr(owner, name)


def stage_seconds(records: Sequence[Tuple[str, bool, float]]) -> Dict[str, float]:
    """One model call's records → seconds per stage of :data:`STAGES` and 'model' (the whole
    call, the sum of the stages). 'last block' is ``crop_logits`` without the VFM, trunk and
    plug-in run inside it; 'other' is what the call spent outside every stage."""
    def total(stage, inside_crop=None):
        return sum(seconds for name, inside, seconds in records
                   if name == stage and inside_crop in (None, inside))
    seconds = {stage: total(stage) for stage in ('VFM', 'CLIP trunk', 'plug-in',
                                                 'post-processing')}
    seconds['last block'] = total('crop') - sum(total(stage, inside_crop=True)
                                                for stage in ('VFM', 'CLIP trunk', 'plug-in'))
    seconds['model'] = total('model')
    seconds['other'] = seconds['model'] - sum(seconds[stage] for stage in STAGES[:-1])
    return {stage: seconds[stage] for stage in ('model', *STAGES)}


# ---------------------------------------------------------------------------- agreement
def agreement(reference: Sequence[Tuple[torch.Tensor, torch.Tensor]],
              outputs: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """(probabilities (C, H, W), labels (H, W)) per image, against the reference's: the share
    of pixels with equal labels and the largest absolute difference of a probability."""
    if len(reference) != len(outputs):
        raise ValueError(f'{len(outputs)} outputs for {len(reference)} reference images')
    equal = pixels = 0
    largest = 0.0
    for (ref_probs, ref_labels), (probs, labels) in zip(reference, outputs):
        equal += int((labels == ref_labels).sum())
        pixels += labels.numel()
        largest = max(largest, float((probs.double() - ref_probs.double()).abs().max()))
    return dict(equal_labels=equal / pixels, max_prob_diff=largest, pixels=pixels)


def _collector(store: list) -> Callable[[list], None]:
    def collect(outputs) -> None:
        for sample in outputs:
            store.append((sample.seg_logits.data.float().cpu(),
                          sample.pred_sem_seg.data[0].cpu()))
    return collect


# ---------------------------------------------------------------------------- runners
def _use_device(device: str) -> torch.device:
    """mmengine's Runner runs on the GPU when there is one: check that this is ``device``."""
    device = check_device(device)
    if device.type == 'cuda':
        torch.cuda.set_device(device.index or 0)
        return torch.device('cuda', torch.cuda.current_device())
    if torch.cuda.is_available():
        raise BenchmarkError("--device cpu: mmengine's Runner runs on the GPU when there is one; "
                             'hide it for a CPU measurement (CUDA_VISIBLE_DEVICES=-1)')
    return device


def build_runner(config: str, precision: str, dataset: dict, work_dir: Path, name: str,
                 random_weights: bool, cfg_options: Optional[dict], seed: int) -> Runner:
    """``tools/test.py``'s runner for ``config`` at ``precision`` over ``dataset``: its model
    built from ``seed`` (the same random weights at every precision), logging quiet.

    The model is built with two names and one template, and its vocabulary embedded once it is
    on the device (the same embeddings): ``tools/test.py`` embeds it at build time, on the CPU,
    where half precision takes minutes; a one-time cost outside the loop either way."""
    # replays as --cfg-options says (eager without it), whatever tools/test.py's default
    cfg = load_test_config(config, cfg_options, work_dir=str(work_dir / name),
                           cuda_graphs=replays_graphs(cfg_options))
    apply_overrides(cfg, random_weights=random_weights)
    cfg.model.clip = dict(cfg.model.clip, precision=precision)
    vocabulary, templates = cfg.model.vocabulary, cfg.model.get('templates')
    cfg.model.vocabulary = [list(c) for c in load_vocabulary(vocabulary).classes[:2]]
    if templates is not None:  # (else the model's default set, for two names)
        cfg.model.templates = ['{}']
    cfg.test_dataloader.dataset = dataset
    cfg.randomness = dict(seed=seed)
    cfg.log_level = 'WARNING'
    cfg.experiment_name = name
    journal = prepare_journal(cfg, resume=False)  # as tools/test.py: every image journaled
    with suggesting_random_weights(random_weights), explained_config_errors(cfg.filename):
        runner = Runner.from_cfg(cfg)  # builds the model
    attach_journal(runner, journal)
    runner.model.set_vocabulary(vocabulary, templates)
    return runner


class Variant:
    """One precision, with or without the plug-in, on its precision's runner."""

    def __init__(self, precision: str, plugin_name: Optional[str], runner: Runner,
                 plugin, clock: LoopClock):
        self.precision, self.runner, self.plugin, self.clock = precision, runner, plugin, clock
        self.name = precision if plugin_name is None else \
            f"{precision} {'+' if plugin is not None else '-'}{plugin_name}"
        self.passes: List[dict] = []
        self.stages: List[Dict[str, float]] = []
        self.crops: List[int] = []
        self.outputs: list = []

    def test_pass(self, collect: bool = False) -> dict:
        """One ``runner.test()`` with this variant's plug-in state."""
        self.runner.model.plugin = self.plugin
        self.outputs = []
        self.clock.collect = _collector(self.outputs) if collect else None
        start = time.perf_counter()
        self.runner.test()
        test_s = time.perf_counter() - start
        self.clock.collect = None
        return dict(images=self.clock.images, loop_s=self.clock.loop_s,
                    data_wait_s=self.clock.data_wait_s, test_s=test_s)

    def time_stages(self, data_batch: dict, repeat: int, device: torch.device) -> None:
        """``repeat`` probed runs of ``test_step`` on ``data_batch``."""
        model = self.runner.model
        model.plugin = self.plugin
        clock = StageClock(device)
        with probed(probe_points(model, self.plugin), clock), torch.no_grad():
            for _ in range(repeat):
                clock.reset()
                model.test_step(data_batch)
                self.stages.append(stage_seconds(clock.records()))
                self.crops = list(clock.crops)

    def result(self) -> dict:
        loops = [p['loop_s'] for p in self.passes]
        median_loop = statistics.median(loops)
        images = self.passes[0]['images']
        return dict(
            precision=self.precision, plugin=self.plugin is not None, passes=self.passes,
            images=images, median_loop_s=median_loop, images_per_s=images / median_loop,
            median_data_wait_s=statistics.median(p['data_wait_s'] for p in self.passes),
            median_test_s=statistics.median(p['test_s'] for p in self.passes),
            crops_per_batch=self.crops, stage_runs=self.stages,
            graph_failures=graph_capture_failures(self.runner.model) or [],
            stages_s={stage: statistics.median(run[stage] for run in self.stages)
                      for stage in ('model', *STAGES)})


def run_e2e(config: str = PROXYCLIP_CONFIG, images: int = 30, size: Sequence[int] = (375, 500),
            precisions: Sequence[str] = ('fp32', ), device: str = 'cpu',
            random_weights: bool = False, repeat: int = 3, stage_repeat: int = 10,
            threads: Optional[int] = None, cfg_options: Optional[dict] = None, seed: int = 0,
            log: Optional[Callable[[str], None]] = None) -> dict:
    """Measure ``config`` end to end (see the module's docstring); ``log(message)`` reports
    progress (default: nothing)."""
    log = log or (lambda message: None)
    if images < 1 or repeat < 1 or stage_repeat < 1:
        raise BenchmarkError('--images, --repeat and --stage-repeat must be at least 1')
    unknown = [p for p in precisions if p not in DTYPES]
    if unknown or len(set(precisions)) != len(precisions):
        raise BenchmarkError(f'precisions must be distinct, of {sorted(DTYPES)}; got '
                             f'{list(precisions)}')
    torch_device = _use_device(device)
    if threads:
        torch.set_num_threads(threads)
    cfg = read_config(config, cfg_options)
    class_names = load_vocabulary(cfg.model.vocabulary).class_names
    with tempfile.TemporaryDirectory(prefix='fsa_seg_e2e_') as folder:
        root = Path(folder)
        make_dataset(root / 'data', images, tuple(size), len(class_names), seed)
        dataset = generated_dataset_cfg(root / 'data', class_names,
                                        cfg.test_dataloader.dataset.pipeline)
        variants = _build_variants(config, precisions, dataset, root, random_weights,
                                   cfg_options, seed, torch_device, log)
        agreements = _warm_up(variants, log)
        for index in range(repeat):
            for variant in (variants if index % 2 == 0 else variants[::-1]):
                variant.passes.append(variant.test_pass())
                log(f'pass {index + 1}/{repeat}: {variant.name} '
                    f"{variant.passes[-1]['loop_s']:.2f} s")
        data_batch = next(iter(variants[0].runner.test_dataloader))
        for variant in variants:
            variant.time_stages(data_batch, stage_repeat, torch_device)
        results = {variant.name: dict(variant.result(), **agreements.get(variant.name, {}))
                   for variant in variants}
        first = variants[0].runner.model
        image_shape = tuple(data_batch['inputs'][0].shape[-2:])
        crop_size = tuple(first.windows(*image_shape)[1])
        plugins = [variant.plugin for variant in variants if variant.plugin is not None]
        plugin_repr = repr(plugins[0]) if plugins else 'none in the config'

    return dict(
        config=config, cfg_options=cfg_options, images=images, size=list(size),
        image_after_pipeline=list(image_shape), crop_size=list(crop_size),
        windows_per_image=len(first.windows(*image_shape)[0]),
        crop_batch_size=first.crop_batch_size, num_classes=len(class_names),
        random_weights=random_weights, repeat=repeat, stage_repeat=stage_repeat,
        plugin=plugin_repr.replace('\n', ' '), variants=[v.name for v in variants],
        env=environment(torch_device), results=results)


def _build_variants(config, precisions, dataset, root, random_weights, cfg_options, seed,
                    device, log) -> List[Variant]:
    """A runner per precision, fp32 first (the reference of the agreement), and each with
    and without its plug-in (the config's; only as it is where it has none)."""
    ordered = sorted(precisions, key=lambda p: p != REFERENCE)
    variants = []
    stamp = f'{time.time_ns():x}'
    for precision in ordered:
        log(f'building the {precision} model ...')
        runner = build_runner(config, precision, dataset, root / 'work_dirs',
                              f'e2e_{precision}_{stamp}', random_weights, cfg_options, seed)
        clock = LoopClock(device)
        runner.register_hook(clock)
        plugin = runner.model.plugin
        name = None if plugin is None else type(plugin).__name__
        states = (None, plugin) if plugin is not None else (None, )
        variants += [Variant(precision, name, runner, state, clock) for state in states]
    return variants


def _warm_up(variants: Sequence[Variant], log) -> Dict[str, dict]:
    """One untimed pass per variant (dataloader workers, kernels, caches), its outputs kept
    for the agreement with the fp32 variant of the same plug-in state."""
    references, agreements = {}, {}
    for variant in variants:
        log(f'warm-up: {variant.name} ...')
        variant.test_pass(collect=True)
        state = variant.plugin is not None
        if variant.precision == REFERENCE:
            references[state] = variant.outputs
        elif state in references:
            agreements[variant.name] = agreement(references[state], variant.outputs)
        variant.outputs = []
    return agreements


# ---------------------------------------------------------------------------- report
def _ms(seconds: float) -> str:
    return f'{seconds * 1e3:.1f}'


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    return cells[0].ljust(widths[0]) + ''.join(c.rjust(w) for c, w in zip(cells[1:], widths[1:]))


COLUMNS = ('variant', 'img/s', 'loop', 'data wait', 'model', 'VFM', 'CLIP trunk', 'last block',
           'plug-in', 'post-proc', 'other', '= labels', 'max|dp|')


def e2e_table(result: dict) -> List[str]:
    """One row per variant: images/s, then milliseconds per image (loop, data wait, and the
    model's stages on the first image), then the agreement with fp32."""
    widths = [max(14, *(len(v) + 2 for v in result['variants']))] + \
        [max(9, len(c) + 2) for c in COLUMNS[1:]]
    rows = [_row(COLUMNS, widths)]
    for name in result['variants']:
        r = result['results'][name]
        images = r['images']
        stages = r['stages_s']
        agree = ([f"{r['equal_labels'] * 100:.2f}%", f"{r['max_prob_diff']:.1e}"]
                 if 'equal_labels' in r else ['-', '-'])
        rows.append(_row([name, f"{r['images_per_s']:.2f}", _ms(r['median_loop_s'] / images),
                          _ms(r['median_data_wait_s'] / images), _ms(stages['model']),
                          *(_ms(stages[stage]) for stage in STAGES), *agree], widths))
    return rows


def e2e_ratios(result: dict) -> List[str]:
    """With / without the plug-in per precision, each precision against fp32, and the plug-in's
    share of the model's time."""
    results = result['results']
    by_key = {(r['precision'], r['plugin']): name for name, r in results.items()}
    lines = []
    for (precision, plugin), name in by_key.items():
        without = by_key.get((precision, False))
        if plugin and without:
            with_, without = results[name]['stages_s'], results[without]
            lines.append(
                f'{precision}, with / without the plug-in: images/s '
                f"{results[name]['images_per_s'] / without['images_per_s']:.2f}x, model time "
                f"{with_['model'] / without['stages_s']['model']:.2f}x; the plug-in "
                f"{with_['plug-in'] / with_['model'] * 100:.1f}% of the model's time")
    for (precision, plugin), name in by_key.items():
        reference = by_key.get((REFERENCE, plugin))
        if precision != REFERENCE and reference:
            speed = results[name]['images_per_s'] / results[reference]['images_per_s']
            lines.append(f'{name} / {reference}: images/s {speed:.2f}x')
    return lines


def e2e_report(result: dict) -> str:
    env = result['env']
    device = env['device'] + (f" ({env['device_name']})" if 'device_name' in env else '')
    weights = ('RANDOM (--random-weights: the times are those of these architectures, the '
               'predictions mean nothing)' if result['random_weights'] else 'from the config')
    options = f" with {result['cfg_options']}" if result.get('cfg_options') else ''
    height, width = result['size']
    crop = 'x'.join(map(str, result['crop_size']))
    first = result['results'][result['variants'][0]]
    lines = [
        "End to end: tools/test.py's path (Runner test loop, the config's data pipeline and "
        'dataloader, evaluator)',
        f"config: {result['config']}{options}; plug-in: {result['plugin']}",
        f"data: {result['images']} generated images {height}x{width} (random pixels and labels, "
        f"{result['num_classes']} classes), {'x'.join(map(str, result['image_after_pipeline']))}"
        f" after the pipeline: {result['windows_per_image']} windows of {crop} per image, in "
        f"crop batches of {first['crops_per_batch']}",
        f'weights: {weights}',
        f"device: {device}, torch {env['torch']}, {env['threads']} threads",
        f"images/s: images / median test-loop time (data loading included) of {result['repeat']}"
        ' timed passes per variant, interleaved, after a warm-up pass each',
        f"ms per image: loop and data wait (medians); the model's stages on the first image, "
        f"medians of {result['stage_repeat']} runs; = labels, max|dp|: against fp32 with the "
        'same plug-in state, all pixels of all images',
        '', *e2e_table(result), '', *e2e_ratios(result),
        'last block: the rest of crop_logits (last attention, values, head, logits, upsampling); '
        'other: preprocessing, windows cut and assembled, per-image context']
    if replayed_from_graphs(result.get('cfg_options'), env['device']):
        lines.append('cuda_graphs: crop batches replayed from CUDA graphs, whose insides no probe '
                     "sees: 'last block' is then the whole crop (VFM, trunk and plug-in read 0)")
    return '\n'.join(lines + capture_failures(result['results'].values()))
