"""Reconstruction models: an auto-encoder family trained on normals; the anomaly map is the reconstruction
error (AE, VAE, β-VAE, WAE, U-Net AE, feature AE, DRAEM with its discriminative head)."""
