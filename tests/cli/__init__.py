"""Tests of speechlab.cli: the commands as a user runs them (speechlab fit/test/score/...)."""
