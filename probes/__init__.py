"""In-kernel programs (BPF C) beside their bcc loaders."""

import flowscope.netns_sockets  # noqa: F401  (before any pyroute2 use: see that module)
