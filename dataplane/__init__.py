"""Kernel-side datapath control: endpoints, CNI, IPAM, maps, the agent and the lab."""

import flowscope.netns_sockets  # noqa: F401  (before any pyroute2 use: see that module)
