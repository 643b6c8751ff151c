"""`python -m trainer.export`: a trained model as others serve it (ONNX, safetensors + model
card, a Triton model repository); docs/EXPORT.md."""
