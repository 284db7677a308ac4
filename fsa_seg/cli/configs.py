"""``fsa-seg configs`` and ``fsa-seg config``: the configs shipped with the package.

    fsa-seg configs [PATTERN]                     config names (shell wildcards or a substring)
    fsa-seg config NAME [--dump FILE]             the config with every base merged in
"""
import argparse
from pathlib import Path

from .arguments import add_cfg_options, add_debug
from .errors import fail


def add_parsers(commands) -> None:
    listing = commands.add_parser(
        'configs', help='list the config names',
        description='List the config names that fsa-seg test, predict and config accept.')
    listing.add_argument('pattern', nargs='?', metavar='PATTERN',
                         help='only names matching it: shell wildcards (e.g. "*_fsa_*_voc21") '
                              'or a part of the name (e.g. proxyclip_fsa_vit-b16)')
    listing.set_defaults(run=run_configs, debug=False)

    export = commands.add_parser(
        'config', help='export a config, every base merged in',
        description='Print (or --dump) a config with every base merged in: a self-contained '
                    'file to edit or to inherit (_base_ = ["./my_base.py"]) from any folder.')
    export.add_argument('name', metavar='NAME', help='config name (fsa-seg configs) or file')
    export.add_argument('--dump', metavar='FILE', help='write it to FILE instead of printing')
    add_cfg_options(export, 'override config keys before exporting')
    add_debug(export)
    export.set_defaults(run=run_config)


def run_configs(args: argparse.Namespace, prog: str) -> int:
    from ..apis.configs import config_roots, list_configs
    names = list_configs(args.pattern)
    if not names:
        where = ', '.join(map(str, config_roots())) or 'no configs folder'
        return fail(prog, f'no config name matches {args.pattern!r} (looked in {where})')
    print('\n'.join(names))
    return 0


def run_config(args: argparse.Namespace, prog: str) -> int:
    from ..apis.configs import export_config
    text = export_config(args.name, args.cfg_options)
    if not args.dump:
        print(text, end='')
        return 0
    target = Path(args.dump).expanduser()
    if target.suffix != '.py':
        return fail(prog, f'--dump {target}: a config file must end in .py')
    from ..apis.testing import file_in_the_way
    blocker = file_in_the_way(target)
    if blocker is not None:
        return fail(prog, f'--dump {target}: {blocker} is a file, not a folder')
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding='utf-8')
    except OSError as error:
        return fail(prog, f'cannot write {target}: {error.strerror or error}')
    print(f'{args.name} written to {target}')
    return 0
