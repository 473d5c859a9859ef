"""`python -m npbert`: the `npbert` command."""

import os
import sys

if getattr(sys.modules.get(__package__ or "npbert"), "__file__", None) is None:
    # Run from the folder holding a clone named `npbert`: `-m` looks in the current folder first and takes the
    # clone itself (no __init__.py) for a namespace package `npbert`, shadowing the installed one. Drop the
    # current folder from the path and import the installed package instead.
    here = os.getcwd()
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    for name in [m for m in sys.modules if m == "npbert" or m.startswith("npbert.")]:
        del sys.modules[name]
    try:
        from npbert.cli import main
    except ImportError:
        print(
            f"npbert: {os.path.join(here, 'npbert')} is not the npbert package and npbert is not installed: "
            "run `pip install -e ./npbert` first, or run from inside the clone",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
else:
    from .cli import main

raise SystemExit(main())
