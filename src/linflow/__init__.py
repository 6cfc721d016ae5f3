"""linflow: linear and softmax regression done properly — PyTorch models in a
reproducible DVC pipeline, checked against scikit-learn, tracked in MLflow."""

__version__ = "0.1.0"
