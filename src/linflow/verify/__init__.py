"""The reproducibility gate behind ``linflow verify`` and ``make portability``.

- :mod:`~linflow.verify.rerun` runs DVC (a forced ``dvc repro``, a second one
  that must run nothing, ``dvc status``) and collects the committed and the new
  results;
- :mod:`~linflow.verify.check` compares them output by output;
- :mod:`~linflow.verify.tolerance` says how far each kind of number may move
  between CPUs;
- :mod:`~linflow.verify.platform` fingerprints the numeric platform;
- :mod:`~linflow.verify.portability` re-runs the pipeline as other CPUs would
  and reports the largest move of every checked number against its tolerance.
"""
