"""Drive other RL engines with medrlvr's data, prompts and reward, and read their runs back.

* :mod:`medrlvr.integrations.verl`: ``medrlvr verl prepare|launch``, the ``TrainConfig`` -> verl
  mapping, the verl reward entry point and the read-back of verl run directories for ``medrlvr report``.
* :mod:`medrlvr.integrations.verl.agent_loop`: the agent loop verl loads (imports verl: only used inside verl).
* :mod:`medrlvr.integrations.openrlhf`: OpenRLHF's ``reward_func(queries, prompts, labels, **kwargs)``.
"""
