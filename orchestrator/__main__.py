"""``python -m orchestrator`` = the ``xmem`` command."""

from orchestrator.cli import main

main()
