"""Toy character-level language models on Tiny Shakespeare: the data, the next-token task, the
0-layer and attention-only studies, and the bigram comparison (notebooks 20-21)."""
