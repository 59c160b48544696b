"""Text generation for the built-in ``chat`` service: model loading, sampling, UTF-8 safe
incremental detokenization and stop strings."""
