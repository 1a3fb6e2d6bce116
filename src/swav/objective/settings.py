"""The objectives' settings (``swav.*``, ``cluster.*``), importable without torch."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SwAVConfig:
    epsilon: float = 0.05
    """Sinkhorn entropy regularisation. The paper's 0.05 is a good default; a larger value makes
    codes uniform (the loss then sticks at ln K), smaller values give harder assignments and
    need fp32 (which is always used here)."""
    sinkhorn_iterations: int = 3
    """Sinkhorn-Knopp iterations; 3 suffices."""
    temperature: float = 0.1
    """Softmax temperature tau of the swapped prediction."""
    crops_for_assign: list[int] = field(default_factory=lambda: [0, 1])
    """Crops whose codes are targets: the large crops (codes from small crops hurt)."""
    queue_length: int = 0
    """Global number of past embeddings per assigned crop (0: no queue). Needed when the batch is
    small compared with K (batch < ~K/2); the paper uses 3840 at batch 256. Must be a multiple of
    the global batch size."""
    epoch_queue_starts: int | str = 15
    """Epoch at which the queue starts filling, or a percentage of the run's epochs ('7.5%': 15
    of 200, 1 of 10). Early embeddings change too fast to be useful, and a queue started too
    early can make training unstable; one that never starts leaves a small batch facing K
    prototypes alone (the loss then sticks at ln K)."""
    freeze_prototypes_niters: int | str = 313
    """Iterations during which the prototypes do not move (their gradients are dropped), or a
    percentage of the run's iterations ('0.5%'). It helps the first steps, when the assignments
    are random; raise it if the loss sticks at ln K."""
    global_sinkhorn: bool = True
    """In distributed training, equipartition over the global batch (all ranks)."""


@dataclass
class ClusterConfig:
    kmeans_iterations: int = 10
    """Iterations of spherical k-means per clustering (DeepCluster-v2)."""
    sela_epsilon: float = 0.05
    """Sinkhorn regularisation of the SeLa-v2 pseudo-labels."""
    sela_iterations: int = 10
    """Sinkhorn-Knopp iterations over the bank (SeLa-v2)."""
