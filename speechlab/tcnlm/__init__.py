"""``speechlab tcnlm generate|topics|coherence``: tools for TopicLMTask checkpoints.

  speechlab tcnlm generate --checkpoint C --topic 3          # or --topic 3:0.7,5:0.3, or all
  speechlab tcnlm topics --checkpoint C --top-k 10
  speechlab tcnlm coherence --checkpoint C --lda --out coherence.json

The functions live in :mod:`speechlab.tcnlm.tools`; each command module defines
``add_arguments(parser)`` and ``main(args)`` and imports torch only when it runs.
"""
