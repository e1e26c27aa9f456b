"""Making a build: export to ONNX, precision conversion, the plugin-node swap, verification against PyTorch,
benchmarks, the manifest and the stage table that ``build_engine.py`` runs. What runs a build lives in
``deployment``; its commands are also run here, as ``python -m pipeline.classify``, ``check``, ``serve``,
``loadtest``, ``tune`` and ``probe_serve``."""
