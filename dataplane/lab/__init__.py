"""The lab: a Kubernetes-style cluster on one machine, built from network namespaces.

topology (pure plan) -> netns/fabric/nodes (kernel objects) -> daemons (etcd, controller, agents)
-> kubelet + sandbox (pods) -> exec/probe (users reach into pods). `cluster` ties them together.
"""
