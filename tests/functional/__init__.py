"""Tests of speechlab.functional (pure tensor functions) and the compiled op they call
(speechlab.ops, the C++/CUDA Gram-CTC kernels)."""
