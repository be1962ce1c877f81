"""``python -m multimodal_rec.cli`` (what ``torchrun`` runs): the ``mmrec`` entry point."""

import sys

from multimodal_rec.cli import main

sys.exit(main())
