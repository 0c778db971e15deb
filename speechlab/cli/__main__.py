"""``python -m speechlab.cli``: the ``speechlab`` command (:func:`speechlab.cli.main`).

The package is imported as itself and this file runs as ``__main__``, so the classes that the
library raises (``CLIError``) are the ones :func:`~speechlab.cli.main` catches.
"""

import sys

from speechlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
