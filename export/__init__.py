"""sttabt_edge.export: ONNX and TFLite (LiteRT) export of STTABT models.

Installed from the top-level ``export/`` folder as ``sttabt_edge.export``.
"""
