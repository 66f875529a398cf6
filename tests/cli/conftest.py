"""Fixtures of `train` through the CLI (test_cli_train.py): an image folder, a tiny BERT with its tokenizer,
an SST-2 folder (a module that defines a fixture of the same name uses its own)."""

from trainkit import glue_dir, image_dir, text_model_dir  # noqa: F401 (fixtures, registered by name)
