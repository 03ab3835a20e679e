"""Inference: the Whisper recogniser, and the driver that runs the decoders over batches and files."""
