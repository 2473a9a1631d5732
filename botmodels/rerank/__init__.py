"""Reranking: `POST /v1/rerank` (Cohere's and Jina's shape) on a cross-encoder runner, or on the
embeddings runner's vectors where no cross-encoder is configured."""
