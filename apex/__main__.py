"""``python -m apex``: the same as the ``apex`` command."""

from apex.cli import main

main()
