"""InferenceService: the trained sequence model in ONNX Runtime — recommendations, interest
probabilities and interest-shift profiles."""
