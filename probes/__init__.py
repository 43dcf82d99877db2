"""In-kernel programs (BPF C) beside their bcc loaders."""
