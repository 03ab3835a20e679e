"""Heavy imports for training, done once in the main thread before any other thread starts.

A module that one thread is still importing is visible, half initialised, to every other
thread. A restarted run crashed this way before its first step: a Grain reader thread's
first ``import librosa`` (SciPy checks ``sys.modules`` for ``torch``) found torch half
imported by the main thread's ``import tensorboardX``. So the trainer imports what the data
pipeline imports lazily before the pipeline's threads exist, and nothing in training imports
torch: tensorboardX only uses it to accept torch tensors, which we never log.
"""

from __future__ import annotations

import sys


def summary_writer_class():
    """tensorboardX's SummaryWriter, imported without importing torch."""
    if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError, which tensorboardX expects
        try:
            import tensorboardX  # noqa: F401
        finally:
            del sys.modules["torch"]
    from tensorboardX import SummaryWriter

    return SummaryWriter


def import_before_threads(n_mels: int) -> None:
    """Everything the data pipeline's threads and the summary writer would import lazily."""
    import librosa
    import soundfile  # noqa: F401
    import soxr  # noqa: F401
    import tqdm  # noqa: F401

    import whisper_llada_jax.checkpoints.model_dir  # noqa: F401  (the final MODEL_DIR)
    from whisper_llada_jax.audio.features import mel_filters

    librosa.load  # noqa: B018  (librosa loads submodules on first attribute access)
    mel_filters(n_mels)  # librosa.filters, cached
    summary_writer_class()
