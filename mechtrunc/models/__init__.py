"""The models: the paper's toy Transformer and its training, the linear associative memory,
Hugging Face causal LMs (Pythia and friends) as TransformerLens bridges, our own GPT-NeoX language
model, and small offline models for trying mechtrunc without the hub.

Modules: :mod:`~mechtrunc.models.toy` and :mod:`~mechtrunc.models.toy_training`,
:mod:`~mechtrunc.models.memory`, :mod:`~mechtrunc.models.hf` (loading by hub id, revision or local
directory), :mod:`~mechtrunc.models.lm` (corpus, tokenizer, training with Pythia's checkpoint
schedule), :mod:`~mechtrunc.models.testing`.  Every model is analysed through the one adapter of
:mod:`mechtrunc.core.adapters`.  This package re-exports nothing.
"""
