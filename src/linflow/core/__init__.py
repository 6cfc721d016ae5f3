"""What every stage shares: one DVC dependency of every stage.

- :mod:`~linflow.core.errors`: the one user-error hierarchy;
- :mod:`~linflow.core.config`: params.yaml -> validated, frozen config objects;
- :mod:`~linflow.core.artifacts`: the typed contracts between stages (the data a
  stage reads, the model card, the reference and compare documents, test metrics);
- :mod:`~linflow.core.storage`: atomic, byte-stable file IO;
- :mod:`~linflow.core.tracking`: MLflow (the only module that imports it);
- :mod:`~linflow.core.plots`: matplotlib figures.

Nothing is imported here: each stage imports what it uses, lazily where heavy.
"""
