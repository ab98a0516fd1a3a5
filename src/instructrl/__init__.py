"""instructrl: InstructGPT's pipeline (SFT -> K-wise RM -> PPO-ptx) for Hugging Face causal LMs.

Importing the package is light: it does not import torch or transformers.
"""

__version__ = "0.1.0"
