"""One module per ``pipeloom`` sub-command; ``pipeloom_cli.app`` registers them."""
