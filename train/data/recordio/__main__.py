"""``python -m train.data.recordio COMMAND ...``: the pack tools of ``train.data.tools``."""

from converters.errors import run_cli
from train.data.tools import main

run_cli(lambda: main())
