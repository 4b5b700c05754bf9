"""The character-level Shakespeare GPT (notebook 22): nanoGPT's CPU configuration as a HookedTransformer
trained by the one loop, and its induction heads, head taxonomy, logit lens and replication across seeds."""
