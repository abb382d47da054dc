"""``python -m informer_audit.cli``: the ``informer-audit`` command."""

from . import main

main()
