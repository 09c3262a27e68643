"""``python -m volseg`` (also what ``torchrun -m volseg`` runs)."""

from volseg.cli import main

raise SystemExit(main())
