"""speechlab's tests, a package so that every test module has a name of its own under
``tests`` and the shared helpers are ``tests.helpers`` (no ``sys.path`` entries of our own)."""
