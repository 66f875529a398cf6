"""HF model loading and timm checkpoint conversion."""
