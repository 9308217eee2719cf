"""``python -m clipviz.bench``: the same as ``clipviz bench``."""

from ..cli.bench import main

raise SystemExit(main())
