"""Decompress a .lic file into an image; see ``python decode.py --help`` and lic/cli.py."""
import sys

from lic.cli import decode_main

sys.exit(decode_main())
