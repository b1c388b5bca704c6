"""lvs-operator: IPVS director pairs with a floating VIP, declared as Kubernetes resources."""

__version__ = "0.1.0"

GROUP = "lvs.io"
VERSION = "v1alpha1"
