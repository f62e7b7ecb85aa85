"""Data shipped with the package: the GPT-NeoX-20B tokenizer (Pythia's), IOI names, factual-recall
prompts, the toy's character statistics and the English excerpt the tests use."""
