"""``python -m robust_ebm`` = the ``robust-ebm`` command."""

from .cli import entry

entry()
