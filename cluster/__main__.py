"""``python -m tumorforge.cluster``: the ``tumorforge`` command as a module (for ``torchrun -m`` and
clusters where the script is not on PATH)."""

import sys

from .front_door import main

sys.exit(main())
