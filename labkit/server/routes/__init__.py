"""The HTTP routes, one module per family: meta (health, ready, models, metrics), generate, embeddings."""
