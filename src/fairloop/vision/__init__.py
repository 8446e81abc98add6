"""Classifiers: construction, training, prediction and checkpoints. Never imports LangChain."""
