"""BPF map mirrors and access: one module per map family, each checked against the compiled C
layout (see layout.py)."""
