"""Embeddings: `/v1/embeddings` and its runner API (`schemas`, `front`);
runner: `runners/embeddings.py`.
"""
