"""Evaluation shared by the training callbacks and the commands: one protocol, one metrics.json schema."""
