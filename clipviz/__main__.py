"""``python -m clipviz``: the same as the ``clipviz`` command."""

from .cli import main

raise SystemExit(main())
