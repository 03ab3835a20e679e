"""Small PyTorch references written from SPEC semantics, for fp32 parity tests."""
