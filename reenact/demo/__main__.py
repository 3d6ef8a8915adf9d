"""``python -m reenact.demo`` (same as ``python demo.py``)."""
import sys

from reenact.demo.cli import main

sys.exit(main())
