"""The trainer tests' fixtures: an image folder, a tiny BERT with its tokenizer, an SST-2 folder (a module
that defines a fixture of the same name, such as test_augment.py's image_dir, uses its own)."""

from trainkit import glue_dir, image_dir, text_model_dir  # noqa: F401 (fixtures, registered by name)
