"""Install kvmlite: one module and two packages, standard library only.

The checkout keeps the layout ``kvmlite.py``, ``devices/``, ``tools/``; an
install must not claim generic top-level names such as ``devices`` or
``tools`` in site-packages, so they are installed as ``kvmlite_devices`` and
``kvmlite_tools`` (kvmlite.py looks for those names first).
"""

from setuptools import setup

setup(
    name='kvmlite',
    version='0.1.0',
    description='Drive Linux KVM (/dev/kvm) from pure Python: no dependencies',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    license='MIT',
    python_requires='>=3.10',
    py_modules=['kvmlite'],
    packages=['kvmlite_devices', 'kvmlite_tools'],
    package_dir={'kvmlite_devices': 'devices', 'kvmlite_tools': 'tools'},
    install_requires=[],
    # pytest loads kvmlite_tools.pytest_kvmlite (the `snippet` fixture) at
    # start-up; nothing imports pytest otherwise
    entry_points={'console_scripts': ['kvmlite = kvmlite:main'],
                  'pytest11': ['kvmlite = kvmlite_tools.pytest_kvmlite']},
    classifiers=[
        'Operating System :: POSIX :: Linux',
        'Programming Language :: Python :: 3',
        'Topic :: System :: Emulators',
    ],
)
