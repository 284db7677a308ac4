"""Evaluate a training-free segmentor on a benchmark (mmseg conventions).

    python tools/test.py CONFIG [--work-dir DIR] [--out results.json] [--show-dir DIR]
                                [--cfg-options key=value ...] [--launcher pytorch]

CONFIG is a config file or a config name (``clearclip_fsa_vit-b16_voc21``: configs/**/NAME.py).
"""
import argparse
import os

from mmengine.config import DictAction

from fsa_seg.apis import evaluate, load_test_config


def parse_args():
    parser = argparse.ArgumentParser(description='Evaluate a training-free segmentor (mIoU)')
    parser.add_argument('config', help='config file or config name (configs/**/NAME.py)')
    parser.add_argument('--work-dir', help='folder for logs (default: ./work_dirs/<config>)')
    parser.add_argument('--out', help='write the metrics as JSON to this file')
    parser.add_argument('--show-dir', help='save prediction / ground-truth overlays here')
    parser.add_argument('--allow-partial-split', action='store_true',
                        help='evaluate a dataset whose image count differs from its split')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. model.prob_thd=0.3')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main():
    args = parse_args()
    cfg = load_test_config(args.config, args.cfg_options, args.work_dir, args.launcher,
                           args.show_dir)
    evaluate(cfg, out=args.out, allow_partial=args.allow_partial_split)


if __name__ == '__main__':
    main()
