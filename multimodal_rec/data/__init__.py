"""Data: tables and leakage-free histories, frame decoding, the frame cache, the synthetic world."""
