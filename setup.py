"""fsa-seg: training-free open-vocabulary semantic segmentation with CLIP and FSA."""
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

STARTUP_HOOK = 'fsa_seg_mmcv_lite.pth'


class BuildPyWithConfigs(build_py):
    """Ship configs/ inside the package (fsa_seg/.mim/configs), as OpenMMLab packages do, so a
    non-editable install can resolve config names; an editable install reads the checkout.

    Both install the start-up hook ``fsa_seg_mmcv_lite.pth`` into site-packages (see
    ``_fsa_seg_mmcv_lite.py``): mmseg then imports with mmcv-lite whatever is imported first."""

    def run(self):
        super().run()
        if self.editable_mode:
            # An editable wheel holds only what lands in the install folder (setuptools'
            # editable_wheel points `install_lib` at the unpacked wheel); build_lib is dropped.
            site_packages = self.get_finalized_command('install').install_lib
            self.copy_file(STARTUP_HOOK, str(Path(site_packages) / STARTUP_HOOK),
                           preserve_mode=False)
            return
        target = Path(self.build_lib) / 'fsa_seg' / '.mim' / 'configs'
        shutil.copytree('configs', target, dirs_exist_ok=True)
        self.copy_file(STARTUP_HOOK, str(Path(self.build_lib) / STARTUP_HOOK),
                       preserve_mode=False)


def read_version() -> str:
    """The one version string, fsa_seg/version.py (not imported: setup runs before the deps)."""
    namespace = {}
    exec(Path('fsa_seg/version.py').read_text(encoding='utf-8'), namespace)
    return namespace['__version__']


setup(
    name='fsa-seg',
    version=read_version(),
    description='Training-free open-vocabulary segmentation with CLIP and the FSA plug-in '
                '(mmsegmentation 1.x toolbox)',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    packages=find_packages(include=['fsa_seg', 'fsa_seg.*']),
    py_modules=['_fsa_seg_mmcv_lite'],
    package_data={'fsa_seg': ['class_names/*.txt', 'assets/*', 'analysis/*.csv']},
    install_requires=[
        'torch>=2.4',  # torch.library.custom_op (FSA's fused CUDA kernel)
        'torchvision>=0.15',
        'mmengine>=0.10.0,<1.0',
        'mmsegmentation>=1.2.0,<1.3',
        'open_clip_torch>=2.24',
        'timm>=1.0',
        'numpy',
        'pillow',
        'ftfy',
        'regex',
        'tqdm',
    ],
    extras_require={
        # mmseg 1.2.x needs mmcv < 2.2; the compiled mmcv is optional (see README, "Why mmcv-lite").
        'lite': ['mmcv-lite>=2.0.0rc4,<2.2.0'],
        'tests': ['pytest>=7', 'ruff>=0.6'],
    },
    entry_points={'console_scripts': ['fsa-seg=fsa_seg.cli:main']},
    cmdclass={'build_py': BuildPyWithConfigs},
)
