"""The offline sandbox world (DESIGN.md section 5): a fictional world with checkable facts,
a pretraining corpus, simulated users who write prompts and simulated labelers who write
demonstrations and rank responses. Pure Python; no torch."""
