"""Compress an image into a .lic file; see ``python encode.py --help`` and lic/cli.py."""
import sys

from lic.cli import encode_main

sys.exit(encode_main())
