"""`--node`: which of a cluster's nodes a reading command (observe, service list) looks at."""

from __future__ import annotations

from flowscope.clusterinfo import ClusterInfo
from flowscope.errors import NotFound


def selected_nodes(info: ClusterInfo, node: str | None) -> list[str]:
    """Every node's name, or just `node` when given; a name not in the cluster is NotFound."""
    nodes = [n.name for n in info.nodes]
    if node is None:
        return nodes
    if node not in nodes:
        raise NotFound(
            f"node {node!r} is not in cluster {info.name!r} (nodes: {', '.join(nodes)})",
            hint="`flowscope lab status` lists the nodes",
        )
    return [node]
