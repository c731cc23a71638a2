"""RND novelty on precomputed sentence embeddings (`core`: the predictor, the baselines kNN and Mahalanobis, AUROC). Its public names are also names of `labnb.rnd`."""
from ..compat import lazy_package
lazy_package(__name__, ["core"], legacy="core")
