"""Tests of what is built on the library: recipes/, notebooks/ and bench/."""
