"""Embedding server: FastAPI app over a MoCo-Matryoshka checkpoint and a mutable FAISS index."""
