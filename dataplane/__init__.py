"""Kernel-side datapath control: endpoints, CNI, IPAM, maps, the agent and the lab."""
