"""``mmseg::`` config bases without ``pkg_resources``.

mmengine finds the folder of an installed package (for ``_base_ = ['mmseg::...']``) through
``pkg_resources``, which setuptools 81+ no longer ships. Where it is missing,
:func:`use_importlib_metadata_for_mmengine` gives ``mmengine.config`` the same two look-ups
written with the standard library's ``importlib.metadata``; where it exists, nothing changes.
"""
import importlib.util
import os.path as osp
from importlib import metadata


def is_installed(package: str) -> bool:
    """mmengine's ``is_installed``: a distribution of that name, or an importable module."""
    try:
        metadata.distribution(package)
        return True
    except metadata.PackageNotFoundError:
        spec = importlib.util.find_spec(package)
        return spec is not None and spec.origin is not None


def get_installed_path(package: str) -> str:
    """mmengine's ``get_installed_path``: the folder of an installed package, given a
    distribution name (``mmsegmentation``) or a module name (``mmseg``)."""
    try:
        distribution = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise
        return osp.dirname(spec.origin)
    top_level = (distribution.read_text('top_level.txt') or package).split()[0]
    for name in (package, top_level):
        path = str(distribution.locate_file(name))
        if osp.exists(path):
            return path
    return str(distribution.locate_file(top_level))


def use_importlib_metadata_for_mmengine() -> bool:
    """Replace mmengine.config's package look-ups if ``pkg_resources`` is missing; True if
    replaced."""
    if importlib.util.find_spec('pkg_resources') is not None:
        return False
    from mmengine.config import config
    config.is_installed = is_installed
    config.get_installed_path = get_installed_path
    return True
