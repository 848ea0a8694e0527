"""Exporting results: merged weights (merge.py), GGUF, Ollama Modelfile."""
