"""``from pipeline.deployed import DeployedModel``: the import kept for users' scripts. The API's code is
``deployment.deployed`` (``from deployment import DeployedModel``)."""

from deployment.deployed import DeployedError, DeployedModel, InputImageError, Prediction, TopClass

__all__ = ["DeployedModel", "Prediction", "TopClass", "DeployedError", "InputImageError"]
