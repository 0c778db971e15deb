"""Tests of the base utilities (speechlab.io, errors, progress): the bottom layer."""
