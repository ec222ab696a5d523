"""Built-in metrics: retrieval (Recall@K, AP), counterfactual (ΔL, ΔG) and datamodeling (LDS)."""

from genattr import hookimpl
from genattr.harness.registry import lazy

M = "genattr.plugins.metrics"

# name, target, version, kind, higher_is_better, display label, description
METRICS = [
    ("recall-at-k", "retrieval:RecallAtK", "1", "retrieval", True, "Recall@K",
     "Recall@K: fraction of the true sources (exemplars) among the top K (k=10 by default)"),
    ("average-precision", "retrieval:AveragePrecision", "1", "retrieval", True, "mAP",
     "Average precision of the true sources' ranks (mAP when averaged over queries)"),
    ("delta-loss", "counterfactual:DeltaLoss", "1", "counterfactual", True, "ΔL",
     "ΔL: query loss of the model retrained without the top-K minus the original's (stride-5 timesteps, shared noise)"),
    ("delta-gen-mse", "counterfactual:DeltaGenMSE", "1", "counterfactual", True, "ΔG (MSE)",
     "ΔG (MSE): pixel MSE between images generated before and after removal from the same noise and prompt"),
    ("delta-gen-sim", "counterfactual:DeltaGenSim", "1", "counterfactual", False, "ΔG (similarity)",
     "ΔG (similarity): cosine similarity of image embeddings of the images generated before and after removal"),
    ("lds", "lds:LDS", "1", "datamodeling", True, "LDS",
     "LDS: Spearman correlation over training subsets between Σ of the method's scores over the subset and minus the "
     "query's loss under the model trained on it"),
    ("teacher-map", "agreement:TeacherMAP", "1", "retrieval", True, "mAP(k)",
     "mAP(k): average precision of the teacher's top k (e.g. exhaustive unlearning) in the method's ranking (FastGDA)"),
]


@hookimpl
def register_metrics(register):
    for name, target, version, kind, hib, display, description in METRICS:
        register(name, lazy(f"{M}.{target}"), version=version, kind=kind, higher_is_better=hib, display=display,
                 description=description)
