"""Allow ``python -m pipeloom_cli``."""

from pipeloom_cli.app import main

main()
