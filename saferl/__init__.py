"""saferl: constrained RLHF.

Align a language model to be helpful while its expected safety cost stays under a limit
(Safe RLHF / PPO-Lagrangian, one-shot dualized alignment MoCAN/PeCAN, and the safety
preference-optimisation family). The layers depend in one direction:
``core <- data/models <- runtime <- learners <- cli``.
"""

__version__ = "0.1.0"
