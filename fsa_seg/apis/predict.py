"""Segment image files and write the results: the library code behind ``fsa-seg predict``.

Per image ``<name>`` (the file's stem, made unique within a run) in the output folder:

- ``<name>_labels.png``: the label map as a palette PNG (pixel value = class index, palette
  entry i = the colour of class i; a 16-bit grayscale PNG above 256 classes);
- ``<name>_overlay.png``: the image with the class colours over it and a legend of the classes
  that occur;
- ``<name>.json``: each class's pixel count and share of the image (shares sum to 1);
- ``<name>_probs.npz`` (optional): ``probs`` (C, H, W) float32 class probabilities and
  ``class_names``.

``summary.json`` describes the run: config, weights, settings, vocabulary, every processed image
with its outputs, every skipped input with the reason, and the run's ``status``. It is rewritten
after every image (always a complete JSON file, also after Ctrl-C or a full disk), and every
output file is written under a temporary name and renamed, so no file is ever half-written.
A folder that already holds a run's ``summary.json`` is refused unless ``overwrite``, or
``resume``: then the images that run segmented under the same settings, whose outputs are all
there, are kept (:func:`resumable_images`) and only the others are segmented.
"""
import glob
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..visualization import make_palette, render_overlay, save_label_png
from .inference import (
    ImageReadError,
    SegmentationResult,
    build_test_pipeline,
    load_image,
    prepare_image,
    run_prepared,
)

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp', '.gif', '.ppm',
                    '.pgm', '.pbm')
DEMO_IMAGE = Path(__file__).resolve().parents[1] / 'assets' / 'demo.jpg'
DEMO_VOCABULARY = ['sky', 'cloud', 'sun', 'grass', 'tree', 'house', 'road']
SUMMARY_NAME = 'summary.json'
RESUME_IGNORES = ('batch_size',)  # settings a resumed run may change: results never depend on them


class OutputDirError(OSError):
    """The output folder cannot be created or written, or holds an earlier run."""


class OutputWriteError(OSError):
    """An output file could not be written (a full disk …); the run stopped there."""


class ResumeError(ValueError):
    """An earlier run cannot be resumed: its summary is unreadable or its settings differ."""


def check_output_dir(out_dir, overwrite: bool = False, resume: bool = False) -> Path:
    """Create ``out_dir`` if needed and prove it writable (a file is created and removed);
    refuse a folder that holds an earlier run's summary unless ``overwrite`` or ``resume``."""
    path = Path(out_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputDirError(f'the output folder {path} is a file; choose another --out-dir')
    if (path / SUMMARY_NAME).exists() and not (path / SUMMARY_NAME).is_file():
        raise OutputDirError(f'{path / SUMMARY_NAME} is not a file, so no summary can be written '
                             'there; remove it or choose another --out-dir')
    if (path / SUMMARY_NAME).exists() and not (overwrite or resume):
        raise OutputDirError(f'{path} already holds the results of an earlier run ('
                             f'{path / SUMMARY_NAME}); choose another --out-dir, pass --resume '
                             'to continue that run, or --overwrite to write this run there '
                             '(its summary.json then replaces the earlier one)')
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix='.fsa_seg_write_test_'):
            pass
    except OSError as error:
        raise OutputDirError(f'cannot write to the output folder {path}: '
                             f'{error.strerror or error}') from error
    return path


class StagedFiles:
    """Write files under temporary names and rename them all at the end: readers never see a
    half-written file, and a failed write leaves none of the group behind. The temporary
    names keep the extension (image writers go by it)."""

    PREFIX = '.partial-'

    def __init__(self):
        self.pending: List[Tuple[Path, Path]] = []

    def write(self, path: Path, write: Callable[[Path], None]) -> None:
        temporary = path.with_name(f'{self.PREFIX}{path.name}')
        self.pending.append((temporary, path))
        write(temporary)

    def __enter__(self) -> 'StagedFiles':
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is None:
            for temporary, path in self.pending:
                os.replace(temporary, path)
            return
        for temporary, _ in self.pending:
            temporary.unlink(missing_ok=True)


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(temporary path)``, then rename it to ``path``."""
    with StagedFiles() as staged:
        staged.write(path, write)


def _is_glob(pattern: str) -> bool:
    return any(char in pattern for char in '*?[')


def expand_inputs(inputs: Sequence[str]) -> Tuple[List[Path], List[dict]]:
    """Files, folders (their images, sorted, not recursive) and glob patterns (``**`` recursive)
    → (image paths in order, without repeats; skipped entries with reasons)."""
    paths: List[Path] = []
    skipped: List[dict] = []
    seen = set()

    def add(path: Path):
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            paths.append(path)

    def add_file(path: Path):
        """An image-named entry of a folder or pattern: a file, or listed as skipped."""
        if path.is_file():
            add(path)
        else:
            skipped.append(dict(input=str(path), reason='named like an image but not a file '
                                                        '(a folder?)'))

    for entry in inputs:
        entry = str(entry)
        path = Path(entry).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not any(p.is_file() for p in found):
                skipped.append(dict(input=entry, reason='folder holds no image files '
                                                        f'({", ".join(IMAGE_EXTENSIONS)})'))
            for p in found:
                add_file(p)
        elif path.is_file():
            add(path)
        elif _is_glob(entry):
            found = sorted(Path(p) for p in glob.glob(os.path.expanduser(entry), recursive=True)
                           if Path(p).suffix.lower() in IMAGE_EXTENSIONS)
            if not any(p.is_file() for p in found):
                skipped.append(dict(input=entry, reason='pattern matches no image files'))
            for p in found:
                add_file(p)
        else:
            skipped.append(dict(input=entry, reason='no such file or folder'))
    return paths, skipped


def resumable_images(out_dir, info: dict) -> List[dict]:
    """The images an earlier run in ``out_dir`` segmented, as its ``summary.json`` lists them,
    whose outputs are all there: what a resumed run keeps ([] without a summary). The earlier run
    must have the settings ``info`` (config, weights, precision, vocabulary …, all but
    ``RESUME_IGNORES``), else :class:`ResumeError` names the ones that changed."""
    path = Path(out_dir) / SUMMARY_NAME
    if not path.exists():
        return []
    try:
        earlier = json.loads(path.read_text(encoding='utf-8'))
        kept = []
        for image in earlier['images']:  # the fields a resumed run reads
            # the outputs in out_dir, wherever the earlier run was told to write them
            outputs = {kind: str(Path(out_dir) / Path(output).name)
                       for kind, output in image['outputs'].items()}
            if image['input'] and outputs['shares'] and all(map(os.path.isfile,
                                                               outputs.values())):
                kept.append(dict(image, outputs=outputs))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ResumeError(f'cannot resume from {path}: not a summary of fsa-seg predict '
                          f'({type(error).__name__}: {error})') from error
    settings = json.loads(json.dumps(info))  # as the summary holds them (tuples become lists)
    changed = [key for key, value in settings.items()
               if key not in RESUME_IGNORES and earlier.get(key) != value]
    if changed:
        raise ResumeError(f'cannot resume from {path}: it is a run of other settings (changed: '
                          f'{", ".join(changed)}); choose another --out-dir, or --overwrite')
    return kept


def _output_names(paths: Sequence[Path], taken: Sequence[str] = ()) -> List[str]:
    """A distinct output name per image, none of ``taken`` nor the summary's: its stem, else
    stem_<extension>, else a counter. Names are distinct ignoring case, so that a file system
    that ignores it (macOS's, Windows') keeps every image's outputs apart. A stem that starts
    like :class:`StagedFiles`'s temporary names loses its leading dot, so no output is
    another's temporary file."""
    used, names = {name.casefold() for name in (Path(SUMMARY_NAME).stem, *taken)}, []
    for path in paths:
        stem = path.stem[1:] if path.stem.startswith(StagedFiles.PREFIX) else path.stem
        candidates = [stem, f'{stem}_{path.suffix.lstrip(".").lower()}']
        name = next((c for c in candidates if c and c.casefold() not in used), None)
        counter = 2
        while name is None or name.casefold() in used:
            name, counter = f'{stem}_{counter}', counter + 1
        used.add(name.casefold())
        names.append(name)
    return names


def class_shares(result: SegmentationResult) -> List[dict]:
    counts = result.pixel_counts()
    shares = result.shares()
    return [dict(index=i, name=name, pixels=int(counts[i]), share=float(shares[i]))
            for i, name in enumerate(result.class_names)]


def write_result(result: SegmentationResult, image: np.ndarray, out_dir: Path, name: str,
                 palette: np.ndarray, save_probs: bool = False, opacity: float = 0.5) -> Dict:
    """Write one image's outputs; returns their paths by kind."""
    outputs = dict(labels=out_dir / f'{name}_labels.png', overlay=out_dir / f'{name}_overlay.png',
                   shares=out_dir / f'{name}.json')
    if save_probs:
        outputs['probs'] = out_dir / f'{name}_probs.npz'
    overlay = render_overlay(image, result.labels, result.class_names, palette, opacity)
    height, width = result.labels.shape
    record = dict(image=result.source, height=height, width=width,
                  classes=class_shares(result))
    with StagedFiles() as staged:  # all of the image's outputs, or none
        staged.write(outputs['labels'], lambda path: save_label_png(result.labels, path, palette))
        staged.write(outputs['overlay'], overlay.save)
        staged.write(outputs['shares'], lambda path: path.write_text(
            json.dumps(record, indent=2), encoding='utf-8'))
        if save_probs:
            staged.write(outputs['probs'], lambda path: np.savez_compressed(
                path, probs=result.probs.astype(np.float32),
                class_names=np.array(result.class_names)))
    return {kind: str(path) for kind, path in outputs.items()}


@dataclass
class PredictionRun:
    """What :func:`predict_files` did; ``status``: ``'running'``, ``'complete'``,
    ``'interrupted'`` or ``'failed: ...'``."""
    processed: List[dict] = field(default_factory=list)
    skipped: List[dict] = field(default_factory=list)
    status: str = 'running'
    resumed: int = 0  # the first ``resumed`` of ``processed`` were kept from an earlier run


def _warn(message: str, progress) -> None:
    if progress is not None:
        progress.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr)


def predict_files(model, paths: Sequence[Path], out_dir, batch_size: int = 1,
                  save_probs: bool = False, opacity: float = 0.5, progress: bool = True,
                  info: Optional[dict] = None, skipped: Sequence[dict] = (),
                  earlier: Sequence[dict] = ()) -> PredictionRun:
    """Segment image files in chunks of ``batch_size``; unreadable ones are reported and
    skipped. Outputs go to ``out_dir`` (see the module doc). With ``info`` (config, settings,
    vocabulary …), ``summary.json`` is written after every chunk and when the run ends, however
    it ends; ``skipped``: inputs already skipped before (listed in the summary); ``earlier``:
    images an earlier run segmented there (:func:`resumable_images`), listed first and kept,
    their output names not given again.

    Raises:
        OutputWriteError: an output could not be written; the run stopped there (its summary
            says so and lists what was done).
    """
    from tqdm import tqdm
    out_dir = Path(out_dir)
    pipeline = build_test_pipeline(model.cfg)
    palette = make_palette(len(model.vocabulary))
    names = _output_names(paths, [Path(image['outputs']['shares']).stem for image in earlier])
    run = PredictionRun(processed=list(earlier), skipped=list(skipped), resumed=len(earlier))
    bar = tqdm(total=len(paths), unit='img', desc='segmenting', disable=not progress,
               file=sys.stderr)
    try:
        for start in range(0, len(paths), batch_size):
            chunk = list(zip(paths[start:start + batch_size], names[start:start + batch_size]))
            loaded, prepared = [], []
            for path, name in chunk:
                try:
                    image = load_image(path)
                    prepared.append(prepare_image(pipeline, image, str(path)))
                    loaded.append((path, name, image))
                except ImageReadError as error:  # unreadable, or too thin to prepare
                    run.skipped.append(dict(input=str(path), reason=error.reason))
                    _warn(f'skipped {path}: {error.reason}', bar if progress else None)
            results = run_prepared(model, prepared, batch_size)
            for (path, name, image), result in zip(loaded, results):
                try:
                    outputs = write_result(result, image, out_dir, name, palette, save_probs,
                                           opacity)
                except OSError as error:
                    raise OutputWriteError(
                        f'cannot write the outputs of {path} in {out_dir}: '
                        f'{error.strerror or error}') from error
                run.processed.append(dict(input=str(path), height=image.shape[0],
                                          width=image.shape[1], outputs=outputs,
                                          undefined_pixels=result.meta['undefined_pixels']))
            bar.update(len(chunk))
            if info is not None:
                try:
                    write_summary(out_dir, run, info)
                except OSError as error:
                    raise OutputWriteError(f'cannot update {out_dir / SUMMARY_NAME}: '
                                           f'{error.strerror or error}') from error
        run.status = 'complete'
    except KeyboardInterrupt:
        run.status = 'interrupted'
        raise
    except OutputWriteError as error:
        run.status = f'failed: {error}'
        raise
    except Exception as error:  # a bug or a broken model: the summary still says how it ended
        run.status = f'failed: {type(error).__name__}: {error}'
        raise
    finally:
        bar.close()
        if info is not None:
            _write_final_summary(out_dir, run, info)
    return run


def _write_final_summary(out_dir, run: PredictionRun, info: dict) -> None:
    """The last summary; if even it cannot be written, the previous one stays valid."""
    try:
        write_summary(out_dir, run, info)
    except OSError as error:
        print(f'could not update {Path(out_dir) / SUMMARY_NAME} ({error.strerror or error}); '
              'it lists the images up to the last one it could record', file=sys.stderr)


def write_summary(out_dir, run: PredictionRun, info: dict) -> Path:
    """``summary.json``: ``info`` (config, settings, vocabulary …) and the run's images, written
    atomically."""
    path = Path(out_dir) / SUMMARY_NAME
    summary = dict(info, status=run.status, num_processed=len(run.processed),
                   num_skipped=len(run.skipped), resumed_images=run.resumed,
                   images=run.processed, skipped=run.skipped)
    text = json.dumps(summary, indent=2)
    write_atomically(path, lambda temporary: temporary.write_text(text, encoding='utf-8'))
    return path
