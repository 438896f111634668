"""The paper's study as one resumable command (``medrlvr study``): base vs SFT vs RLVR, in and out of distribution.

- :mod:`~medrlvr.study.config`: ``StudyConfig`` and its sections, presets (``study-cpu``, ``paper-3b``), errors
  with file and line;
- :mod:`~medrlvr.study.steps`: the steps with completion markers, the plan, one step's run;
- :mod:`~medrlvr.study.stats`: paired bootstrap interval and McNemar's exact test;
- :mod:`~medrlvr.study.estimate`: the time estimate printed before a study starts;
- :mod:`~medrlvr.study.collect`: ``study.json`` from the finished steps; :mod:`~medrlvr.study.markdown`,
  :mod:`~medrlvr.study.figures`, :mod:`~medrlvr.study.html`: ``study.md``, the figures, ``study.html``;
- :mod:`~medrlvr.study.run`: the whole study in order; :mod:`~medrlvr.study.commands`: the command line.
"""
