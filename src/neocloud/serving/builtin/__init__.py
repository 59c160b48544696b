"""Built-in services: ``embeddings`` (sentence-transformers) and ``chat`` (causal LM)."""
