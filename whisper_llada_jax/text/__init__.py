"""Tokenizers over Hugging Face ``tokenizers`` files (no transformers at run time)."""
