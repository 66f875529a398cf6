"""The STTABT method as small pure functions over tensors (no model classes here)."""
