"""``fsa-seg predict``: segment your own images.

    fsa-seg predict [INPUT ...] [--vocab sky tree "house; building"] [--config NAME_OR_FILE]
                    [--out-dir DIR] [--device cuda] [--precision fp16] ...

With no input it segments the bundled demo image with a demo vocabulary.
"""
import argparse
import os
import sys
from typing import List, Optional, Sequence, Tuple, Union

from .arguments import add_cfg_options, add_cuda_graphs, add_debug, positive_int
from .errors import FP16_ON_CPU, INTERRUPTED, fail, warn

DEFAULT_OUT_DIR = 'fsa_seg_predictions'

PREDICT_DESCRIPTION = """\
Segment your own images with a training-free open-vocabulary segmentor (default: ProxyCLIP +
FSA, CLIP ViT-B/16 OpenAI, DINO ViT-B/8). Without INPUT, segments the bundled demo image with the
vocabulary sky cloud sun grass tree house road.

Outputs per image in --out-dir: NAME_labels.png (palette PNG, pixel value = class index),
NAME_overlay.png (colours + legend), NAME.json (each class's pixel share), with --save-logits
NAME_probs.npz (class probabilities); and summary.json for the whole run, rewritten after
every image (an --out-dir holding an earlier run is refused without --overwrite or --resume)."""

PREDICT_EPILOG = """\
vocabulary (--vocab, after the inputs: it takes every argument that follows):
  classes         background "cat; kitten" dog   one class per argument, ';' between the
                  synonyms of a class (the class is named by its first synonym)
  a bundled name  voc21, context60, ade20k, cityscapes, coco_object, coco_stuff164k, ...
  a file          one class per line, synonyms on a line separated by ';' (SCLIP's files,
                  with ', ' between synonyms, are read too)
  at least two classes, no name twice; default: the config's vocabulary (VOC's 21 classes for
  the default config).
  --prob-thd sends pixels whose top probability is lower to class 0, so put a background class
  first when you use it; with a vocabulary other than the config's the default is no
  threshold (the config's own, e.g. 0.2 for VOC21, applies to its own vocabulary only).

weights: the config's pretrained weights are downloaded into the open_clip / timm (Hugging Face)
caches. Without network access, download them elsewhere and pass the files:
  --clip-weights  the open_clip checkpoint (default config: ViT-B-16 'openai',
                  https://huggingface.co/timm/vit_base_patch16_clip_224.openai,
                  open_clip_model.safetensors or open_clip_pytorch_model.bin)
  --vfm-weights   the timm / official VFM checkpoint (default config: timm
                  vit_base_patch8_224.dino, https://huggingface.co/timm/vit_base_patch8_224.dino,
                  model.safetensors, or the official dino_vitbase8_pretrain.pth)

examples:
  fsa-seg predict
  fsa-seg predict photos/ "more/**/*.jpg" --vocab sky tree road "car; vehicle" --device cuda
  fsa-seg predict img.png --vocab voc21 --prob-thd 0.2 --save-logits --out-dir out/
  fsa-seg predict img.png --config maskclip_fsa_vit-b16_context60 --precision fp16
"""


class VocabularyArgumentError(ValueError):
    """A --vocab value that is neither a list of classes, a bundled name nor a file."""


IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def _names_images(value: str, images_given: bool) -> bool:
    """Whether a --vocab value is an image file, or, where it looks like a path or pattern or
    no image was given before --vocab, a folder or pattern of images: an input given late.
    (A plain word beside given images stays a class, even if a folder bears its name.)"""
    from ..apis.predict import expand_inputs
    if os.path.isfile(value):  # a class-name file, or an image
        return value.lower().endswith(IMAGE_SUFFIXES)
    path_like = os.sep in value or any(char in value for char in '*?[')
    return (path_like or not images_given) and bool(expand_inputs([value])[0])


def parse_vocabulary(values: Sequence[str], bundled: Sequence[str], images_given: bool = True
                     ) -> Union[str, List[str]]:
    """``--vocab`` values → a bundled name, a class-name file path, or a list of classes (one
    per value, synonyms separated by ``;``). The list is checked when it is loaded.
    ``images_given``: whether inputs came before --vocab."""
    values = [value.strip() for value in values]
    for value in values:
        if _names_images(value, images_given):
            raise VocabularyArgumentError(
                f'--vocab {value!r} names images: give the images before --vocab (it takes '
                'every argument after it), e.g. fsa-seg predict photo.jpg --vocab sky tree')
    if len(values) == 1 and (values[0] in bundled or os.path.isfile(values[0])):
        return values[0]
    for value in values:
        if ',' in value:
            raise VocabularyArgumentError(
                f'--vocab {value!r}: separate the synonyms of a class with ";" (e.g. "house; '
                'building"); each class is one argument: --vocab sky tree "house; building"')
    if len(values) == 1:
        hint = (' (one argument is one class: --vocab sky tree "house; building")'
                if ';' in values[0] else '')
        raise VocabularyArgumentError(
            f'--vocab {values[0]!r} is not a bundled vocabulary ({", ".join(bundled)}) nor an '
            f'existing class-name file; a list needs at least two classes{hint}')
    return values


def _size(text: str) -> Tuple[int, int]:
    """``336`` or ``336x448`` (height x width)."""
    try:
        parts = [int(p) for p in text.lower().replace(',', 'x').split('x')]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f'expected a positive size like 336 or 336x448, got '
                                         f'{text!r}')
    return parts[0], parts[1]


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f'expected a number in [0, 1], got {text!r}')
    return value


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('inputs', nargs='*', metavar='INPUT',
                        help='image files, folders (their images) or glob patterns (quote them; '
                             '** recurses). Default: the bundled demo image')
    parser.add_argument('--vocab', '--vocabulary', dest='vocab', nargs='+', metavar='CLASS',
                        help='the classes, one per argument, synonyms separated by ";" '
                             '(sky tree "house; building"), or a bundled name or a class-name '
                             'file (see below)')
    parser.add_argument('--config', default=None, metavar='NAME_OR_FILE',
                        help='a config name (configs/**/NAME.py) or file; default '
                             'proxyclip_fsa_vit-b16_dino-b8_voc21')
    parser.add_argument('--out-dir', default=DEFAULT_OUT_DIR, metavar='DIR',
                        help=f'output folder (created; default ./{DEFAULT_OUT_DIR})')
    earlier_run = parser.add_mutually_exclusive_group()
    earlier_run.add_argument('--overwrite', action='store_true',
                             help='write into an --out-dir that holds an earlier run (its '
                                  'summary.json is replaced); without it such a folder is '
                                  'refused')
    earlier_run.add_argument('--resume', action='store_true',
                             help='continue the earlier run in --out-dir (interrupted, or with '
                                  'images added): the images its summary.json lists, with '
                                  'their outputs there, are kept, the others segmented; refused '
                                  'if its settings differ. Run it from the same folder as before '
                                  '(inputs are matched by path)')
    parser.add_argument('--device', default=None,
                        help='cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)')
    parser.add_argument('--precision', choices=['fp32', 'fp16', 'bf16'], default=None,
                        help="CLIP's and the VFM's precision (default: the config's, fp32)")
    add_cuda_graphs(parser)
    parser.add_argument('--crop', type=_size, metavar='SIZE',
                        help='sliding-window crop, 336 or HxW (default: the config\'s)')
    parser.add_argument('--stride', type=_size, metavar='SIZE',
                        help='sliding-window stride, 112 or HxW (default: the config\'s)')
    parser.add_argument('--prob-thd', type=_unit_float, default=None, metavar='P',
                        help='pixels whose top class probability is below P become class 0 '
                             '(default: the config\'s with its own vocabulary, else 0)')
    parser.add_argument('--batch-size', type=positive_int('integer'), default=1, metavar='N',
                        help='images per forward pass (images of one prepared size are '
                             'batched; results never depend on it)')
    parser.add_argument('--save-logits', '--save-probs', dest='save_logits', action='store_true',
                        help='also write NAME_probs.npz: class probabilities (C, H, W) float32')
    parser.add_argument('--opacity', type=_unit_float, default=0.5,
                        help='opacity of the class colours in the overlay (default 0.5)')
    parser.add_argument('--clip-weights', metavar='PATH',
                        help='local CLIP checkpoint instead of downloading the config\'s')
    parser.add_argument('--vfm-weights', metavar='PATH',
                        help='local VFM checkpoint (ProxyCLIP) instead of downloading the '
                             'config\'s')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='unpickle local checkpoint files fully: only for files you trust '
                             '(a pickle can run code). Without it they are read weights-only')
    parser.add_argument('--random-weights', action='store_true',
                        help='TESTING ONLY: build with random weights (meaningless output)')
    add_cfg_options(parser, 'override config keys, e.g. model.logit_scale=50')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    add_debug(parser)
    parser.set_defaults(run=run_predict)


def add_parsers(commands) -> None:
    """``fsa-seg predict``."""
    add_predict_arguments(commands.add_parser(
        'predict', help='segment your own images', description=PREDICT_DESCRIPTION,
        epilog=PREDICT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter))


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The ``fsa-seg predict`` arguments as a command of their own (``tools/predict.py``)."""
    parser = argparse.ArgumentParser(prog=prog, description=PREDICT_DESCRIPTION,
                                     epilog=PREDICT_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_predict_arguments(parser)
    return parser


def _weights_description(component: Optional[dict]) -> Optional[str]:
    if component is None:
        return None
    if component.get('random_init'):
        return 'random'
    pretrained = component.get('pretrained', True)
    return str(pretrained)


def _resize_description(cfg) -> Optional[dict]:
    for step in cfg.get('test_pipeline') or []:
        if step['type'].split('.')[-1] == 'Resize':
            return {k: v for k, v in step.items() if k != 'type'}
    return None


def run_predict(args: argparse.Namespace, prog: str = 'fsa-seg predict') -> int:
    """``fsa-seg predict`` with parsed arguments; returns the exit status."""
    # Everything that can be checked without a model is checked first.
    from ..apis.predict import (
        DEMO_IMAGE,
        DEMO_VOCABULARY,
        SUMMARY_NAME,
        OutputWriteError,
        ResumeError,
        check_output_dir,
        expand_inputs,
        predict_files,
        resumable_images,
    )
    out_dir = check_output_dir(args.out_dir, overwrite=args.overwrite, resume=args.resume)
    inputs = args.inputs or [str(DEMO_IMAGE)]
    vocab_values = args.vocab
    if not args.inputs and vocab_values is None:
        vocab_values = DEMO_VOCABULARY
    paths, skipped = expand_inputs(inputs)
    for entry in skipped:
        print(f'{prog}: skipped {entry["input"]}: {entry["reason"]}', file=sys.stderr)
    if not paths:
        return fail(prog, 'no images to segment')

    import torch

    from ..apis.configs import DEFAULT_CONFIG, components, has_random_weights
    from ..apis.inference import default_device, device_available, init_segmentor
    from ..models.backbones.clip import PRECISIONS
    from ..models.text import bundled_vocabularies
    try:
        vocabulary = None if vocab_values is None else parse_vocabulary(
            vocab_values, bundled_vocabularies(), images_given=bool(args.inputs))
    except VocabularyArgumentError as error:
        return fail(prog, str(error))
    device = args.device or default_device()
    try:
        torch_device = torch.device(device)
    except RuntimeError as error:
        return fail(prog, f'--device {device!r}: {error}')
    if not device_available(torch_device):
        return fail(prog, f'--device {device}: {torch_device.type.upper()} is not available '
                          'here (use --device cpu)')
    try:
        model = init_segmentor(
            args.config or DEFAULT_CONFIG, device=device, vocabulary=vocabulary,
            cfg_options=args.cfg_options, clip_weights=args.clip_weights,
            vfm_weights=args.vfm_weights, random_weights=args.random_weights,
            precision=args.precision, prob_thd=args.prob_thd, crop=args.crop,
            stride=args.stride, trust_checkpoint=args.trust_checkpoint,
            cuda_graphs=args.cuda_graphs)
    except ValueError as error:
        # a bad vocabulary or option combination (crop/stride, precision …)
        return fail(prog, str(error))
    cfg = model.cfg
    precision = {dtype: name for name, dtype in PRECISIONS.items()}[model.clip.dtype]
    if torch_device.type == 'cpu' and precision == 'fp16':
        warn(prog, FP16_ON_CPU)
    info = dict(
        config=cfg.filename, model=cfg.model.type,
        weights={key: _weights_description(cfg.model[key]) for key, _ in components(cfg.model)},
        random_weights=has_random_weights(cfg),
        device=device, precision=precision,
        resize=_resize_description(cfg), test_cfg=dict(model.test_cfg),
        prob_thd=model.prob_thd, batch_size=args.batch_size, save_logits=args.save_logits,
        opacity=args.opacity,
        vocabulary=[dict(index=i, name=name, synonyms=list(synonyms)) for i, (name, synonyms)
                    in enumerate(zip(model.vocabulary.class_names, model.vocabulary.classes))])
    summary = out_dir / SUMMARY_NAME
    try:
        earlier = resumable_images(out_dir, info) if args.resume else []
    except ResumeError as error:
        return fail(prog, str(error))
    if earlier:
        done = {os.path.abspath(image['input']) for image in earlier}
        paths = [path for path in paths if os.path.abspath(path) not in done]
        print(f'{prog}: resuming: {len(earlier)} image(s) segmented before are kept, '
              f'{len(paths)} to segment', file=sys.stderr)
    try:
        run = predict_files(model, paths, out_dir, batch_size=args.batch_size,
                            save_probs=args.save_logits, opacity=args.opacity,
                            progress=not args.quiet, info=info, skipped=skipped,
                            earlier=earlier)
    except KeyboardInterrupt:
        print(f'{prog}: interrupted; {summary} lists the images segmented so far (the same '
              'command with --resume continues)', file=sys.stderr)
        return INTERRUPTED
    except OutputWriteError as error:
        return fail(prog, f'{error}; {summary} lists the images done before')
    skipped_note = f'{len(run.skipped)} skipped (listed in the summary)' if run.skipped \
        else 'none skipped'
    kept_note = f', {run.resumed} kept from the earlier run' if run.resumed else ''
    print(f'{len(run.processed) - run.resumed} image(s) segmented{kept_note}, {skipped_note}; '
          f'results in {out_dir}, summary {summary}')
    return 0 if run.processed else 1
