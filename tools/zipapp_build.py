"""Build kvmlite.pyz: the whole product as one file for hosts without pip.

    python3 -m tools.zipapp_build [-o kvmlite.pyz]
    python3 kvmlite.pyz run            # the demo guest
    python3 kvmlite.pyz info

The archive is a zipapp (PEP 441): a shebang line, then a zip holding
kvmlite.py, devices/ and tools/ as in the checkout (only .py files) and a
__main__.py that calls kvmlite.main().
"""

import argparse
import os
import zipfile

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = 'import sys, kvmlite\nsys.exit(kvmlite.main())\n'


def build(output):
    with zipfile.ZipFile(output + '.tmp', 'w', zipfile.ZIP_DEFLATED) as z:
        z.writestr('__main__.py', MAIN)
        z.write(os.path.join(HERE, 'kvmlite.py'), 'kvmlite.py')
        for package in ('devices', 'tools'):
            for name in sorted(os.listdir(os.path.join(HERE, package))):
                if name.endswith('.py'):
                    z.write(os.path.join(HERE, package, name), f'{package}/{name}')
    with open(output + '.tmp', 'rb') as src, open(output, 'wb') as dst:
        dst.write(b'#!/usr/bin/env python3\n')
        dst.write(src.read())
    os.unlink(output + '.tmp')
    os.chmod(output, 0o755)
    return output


def main(argv=None):
    ap = argparse.ArgumentParser(description='Build kvmlite.pyz (a zipapp).')
    ap.add_argument('-o', '--output', default=os.path.join(HERE, 'kvmlite.pyz'))
    args = ap.parse_args(argv)
    print(build(args.output))


if __name__ == '__main__':
    main()
