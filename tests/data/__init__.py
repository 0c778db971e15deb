"""Tests of the layers below the tasks that hold no model: speechlab.data (manifests, audio, text,
vocabularies, corpora, data modules), speechlab.lm (n-gram LMs) and the scorer (speechlab.score,
metrics)."""
