"""Tests of speechlab.nn (nn.Modules: encoders, recurrences, the TC-LSTM and topic model)."""
