"""The vector index as a library: stored full-dim vectors, exact search at any nesting dim,
ANN shortlist + rerank, the write-ahead log, thumbnails and the folder. No HTTP, no training."""
