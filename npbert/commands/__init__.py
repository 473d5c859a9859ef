"""One module per `npbert` sub-command; see npbert/cli.py."""
