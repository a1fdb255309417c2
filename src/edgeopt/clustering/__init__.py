"""Weight clustering (k-means weight sharing) and the compressed stored size of weights.

    model = eo.apply(model, eo.ClusterConfig(clusters=16))
    report = edgeopt.clustering.stored_size(model)     # codebook + indices, entropy-coded
"""

from edgeopt.clustering.config import ClusterConfig, Granularity, Init
from edgeopt.clustering.modules import CLUSTERED_PARAMS, ClusteredLayer
from edgeopt.storage import (
    StorageReport,
    TensorRecord,
    load_compressed,
    save_compressed,
    stored_size,
)

__all__ = ["CLUSTERED_PARAMS", "ClusterConfig", "ClusteredLayer", "Granularity", "Init",
           "StorageReport", "TensorRecord", "load_compressed", "save_compressed", "stored_size"]
