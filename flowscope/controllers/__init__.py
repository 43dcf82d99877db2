"""Controllers, as kube-controller-manager runs them: pure decision functions plus async loops.

- scheduler: spec.nodeName for unbound pods (fewest pods on a Ready node, ties by name)
- endpointslices: discovery.k8s.io/v1 EndpointSlices for Services with a selector
"""

from flowscope.controllers.manager import run_controllers

__all__ = ["run_controllers"]
