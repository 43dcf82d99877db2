"""The node agent: one process per node, in the root namespace, reaching its node by netlink."""
