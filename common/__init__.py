"""The neutral layer every package may import: errors, command-line reporting, files, images, ONNX metadata.

It imports nothing from the project's other packages (``docs/ARCHITECTURE.md``).
"""
