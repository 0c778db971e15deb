"""``python -m speechlab``: the ``speechlab`` command (:func:`speechlab.cli.main`)."""

import sys

from speechlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
