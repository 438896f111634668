"""The RL trainer: rollouts -> verifiable rewards -> advantages -> PPO-style updates.

- :mod:`medrlvr.train.config`: :class:`~medrlvr.train.config.TrainConfig`, presets, ``key=value`` overrides;
- :mod:`medrlvr.train.stream`: the seeded question stream and the scoring of sampled completions;
- :mod:`medrlvr.train.forward`: packing sequences and the training forward (log-probs, values);
- :mod:`medrlvr.train.trainer`: :class:`~medrlvr.train.trainer.Trainer` and :func:`~medrlvr.train.trainer.train`;
- :mod:`medrlvr.train.resume`: checkpoints to resume from, log truncation, config drift;
- :mod:`medrlvr.train.distributed`: ``torchrun``, DDP and FSDP2 through ``torch.distributed``.

This package's ``__init__`` imports nothing, so that the evaluation and integration modules can use the
configuration and the forward without loading the trainer.
"""
