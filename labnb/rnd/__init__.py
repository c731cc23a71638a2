"""RND novelty on precomputed sentence embeddings (`core`: the predictor, the baselines kNN and Mahalanobis, AUROC). Its public names are also names of `labnb.rnd`."""
from ..compat import lazy_namespace
__getattr__, __dir__ = lazy_namespace(__name__, ["core"])
