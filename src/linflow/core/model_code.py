"""The MLflow Model of a linflow training: models-from-code, no pickle.

This file is logged with every model (``mlflow.pyfunc.log_model(python_model=<this
file>, ...)``) and MLflow executes it when the model is loaded: it is the only
code a load runs besides linflow's pure scoring modules, shipped beside it as
the package ``linflow_model`` (``scoring``, ``transform``, ``metrics``). The
model's artifacts are data: the safetensors weights, ``transform.json`` (raw
columns -> model inputs) and ``model.json`` (the card). Rows are scored by
``linflow_model.scoring``, the code ``linflow predict`` runs, so both give the
same numbers. A tampered artifact (weights of another shape, a transform that
does not match them) fails the load with one line.
"""

from __future__ import annotations

import json

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel


class LinflowModel(PythonModel):
    """Linear or softmax regression over a table's raw columns."""

    def load_context(self, context) -> None:
        from linflow_model import scoring
        from safetensors.numpy import load_file

        self._scoring = scoring
        try:
            tensors = load_file(context.artifacts["weights"])
            with open(context.artifacts["transform"]) as fh:
                self.transform = json.load(fh)
            with open(context.artifacts["card"]) as fh:
                self.task = json.load(fh)["task"]
            self.W, self.b = tensors["weight"], tensors["bias"]
            scoring.check_model(self.W, self.b, self.transform, self.task)
        except (scoring.ScoringError, KeyError, ValueError, OSError) as exc:
            what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
            raise MlflowException(f"linflow model: cannot load: {what}") from None

    # A DataFrame in and out: MLflow then validates rows against the logged signature
    # (the raw columns), not against a type hint.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        scoring = self._scoring
        try:
            return scoring.predict_frame(model_input, self.W, self.b, self.transform, self.task)
        except scoring.ScoringError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None


set_model(LinflowModel())
