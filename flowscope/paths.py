"""Where a cluster keeps its files and how its kernel objects are named.

One cluster's names never prefix another's: the netns prefix ends in '.', a character no cluster
name (a DNS label) may contain.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CLUSTER = os.environ.get("FLOWSCOPE_CLUSTER", "lab")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,18}[a-z0-9])?$")

RUN_ROOT = Path(os.environ.get("FLOWSCOPE_RUN_ROOT", "/run/flowscope"))
LIB_ROOT = Path(os.environ.get("FLOWSCOPE_LIB_ROOT", "/var/lib/flowscope"))
BPF_ROOT = Path(os.environ.get("FLOWSCOPE_BPF_ROOT", "/sys/fs/bpf/flowscope"))
CGROUP_ROOT = Path(os.environ.get("FLOWSCOPE_CGROUP_ROOT", "/sys/fs/cgroup/unified/flowscope"))
CNI_CONF_ROOT = Path(os.environ.get("FLOWSCOPE_CNI_CONF_ROOT", "/etc/cni/net.d"))


def valid_cluster_name(name: str) -> bool:
    return bool(_NAME.match(name))


@dataclass(frozen=True)
class ClusterPaths:
    """Every path and kernel-object name that belongs to one lab cluster."""

    cluster: str

    @property
    def run_dir(self) -> Path:  # pid files, logs, sockets
        return RUN_ROOT / self.cluster

    @property
    def lib_dir(self) -> Path:  # persistent state: etcd data
        return LIB_ROOT / self.cluster

    @property
    def state_file(self) -> Path:  # what `lab up` built: nodes, ports, modes
        return self.run_dir / "cluster.json"

    @property
    def bpf_dir(self) -> Path:
        return BPF_ROOT / self.cluster

    @property
    def cgroup_dir(self) -> Path:
        return CGROUP_ROOT / self.cluster

    @property
    def netns_prefix(self) -> str:
        return f"fs.{self.cluster}."

    @property
    def fabric_netns(self) -> str:
        return f"{self.netns_prefix}fabric"

    def node_netns(self, node: str) -> str:
        return f"{self.netns_prefix}{node}"

    def pod_netns(self, pod_uid: str) -> str:
        return f"{self.netns_prefix}pod.{pod_uid[:13]}"

    def node_dir(self, node: str) -> Path:
        return self.run_dir / "nodes" / node

    def agent_socket(self, node: str) -> Path:
        return self.node_dir(node) / "agent.sock"

    def node_bpf_dir(self, node: str) -> Path:
        return self.bpf_dir / node

    def node_cgroup(self, node: str) -> Path:
        return self.cgroup_dir / node

    def pod_cgroup(self, node: str, pod_uid: str) -> Path:
        return self.node_cgroup(node) / f"pod-{pod_uid}"

    def cni_conf_dir(self, node: str) -> Path:
        # one directory per node: each lab node stands for a host with its own /etc/cni/net.d
        return CNI_CONF_ROOT / f"flowscope.{self.cluster}.{node}"

    def cni_conf_dirs(self) -> list[Path]:
        """Every node's CNI config directory of this cluster (and of no other: see above)."""
        return sorted(CNI_CONF_ROOT.glob(f"flowscope.{self.cluster}.*"))
