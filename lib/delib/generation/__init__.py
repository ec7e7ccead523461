"""Stage 02: chains of thought and answers written over the spec."""
