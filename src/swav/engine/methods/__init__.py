"""The built-in methods, registered in ``swav.engine.method.METHODS`` on import: SwAV
(``swav``), DeepCluster-v2 (``deepclusterv2``) and SeLa-v2 (``selav2``)."""

from swav.engine.methods import clustering, swav

__all__ = ["clustering", "swav"]
