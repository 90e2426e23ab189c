"""``python -m gradcomp`` runs the command-line interface."""

from gradcomp.cli import main

raise SystemExit(main())
