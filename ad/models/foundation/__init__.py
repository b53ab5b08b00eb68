"""Foundation-model models: a frozen DINOv2 encoder with a trained feature reconstructor (Dinomaly)."""
