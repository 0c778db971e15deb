"""Tests of the project as a whole: the layers of speechlab/ (test_layers.py) and the dependencies
pyproject.toml declares."""
