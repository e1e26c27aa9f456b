"""Running a build: what a user ships. Opening a package (``deployment.deployed.DeployedModel``), classify, the
package's check on the machine it lands on, the gates it is judged by, serving with Triton (front, worker, probes),
load tests and Triton model repositories.

Nothing here imports torch, timm or ModelOpt: a runtime-only install (``pip install .``) runs all of it. The
commands keep their names ``python -m pipeline.NAME`` (thin modules in ``pipeline/``), and console scripts
``s2mlpv2-*``.
"""

from .deployed import DeployedError, DeployedModel, InputImageError, Prediction, TopClass

__all__ = ["DeployedModel", "Prediction", "TopClass", "DeployedError", "InputImageError"]
