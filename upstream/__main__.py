"""`python -m upstream ...`: see upstream/cli.py."""

from upstream.cli import main

raise SystemExit(main())
