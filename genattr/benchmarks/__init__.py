"""Built-in benchmarks: the Customized Model benchmark and the leave-K-out counterfactual."""

from genattr import hookimpl
from genattr.harness.registry import lazy

M = "genattr.benchmarks"

BENCHMARKS = [
    ("customized-model", "customized_model:CustomizedModelBenchmark", "2",
     "Customized Model benchmark (AbC): Recall@K and mAP of retrieving a customized model's exemplars"),
    ("leave-k-out", "leave_k_out:LeaveKOutBenchmark", "1",
     "Leave-K-out counterfactual: retrain without the top-K training items; ΔL and ΔG on the query"),
    ("lds", "lds:LDSBenchmark", "1",
     "Linear datamodeling score: Spearman of summed scores vs minus the query's loss over subset models trained once"),
    ("teacher-agreement", "teacher_agreement:TeacherAgreementBenchmark", "1",
     "Teacher agreement (FastGDA): mAP(k) of a method's ranking against exhaustive unlearning's top-k, held-out queries"),
]


@hookimpl
def register_benchmarks(register):
    for name, target, version, description in BENCHMARKS:
        register(name, lazy(f"{M}.{target}"), version=version, description=description)
