"""medrlvr: reinforcement learning from verifiable rewards (RLVR) on medical multiple-choice QA.

Reproduces and extends Med-RLVR (Zhang et al., 2025): a base language model trained with PPO on
MedQA-USMLE questions, rewarded only by a rule that checks the output format
``<think>...</think><answer>...</answer>`` and the chosen letter.
"""

__version__ = "0.1.0"
