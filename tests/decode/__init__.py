"""Tests of speechlab.decode (beam searches, n-gram fusion, the decoding configuration)."""
