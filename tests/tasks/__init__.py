"""Tests of speechlab.tasks (the LightningModules): training, checkpoints, resume, bf16, DDP."""
