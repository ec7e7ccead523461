"""Stage 01: the spec, the prompt sets, and what the stage hands on."""
