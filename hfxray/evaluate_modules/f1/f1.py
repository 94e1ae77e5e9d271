"""F1 as a local `evaluate` module (hfxray copy, works with the Hub unreachable).

Same inputs and output as the Hub's `evaluate-metric/f1`, so `hfxray.metrics.load_metric` can
hand out either one. Loaded by `evaluate.load("<this folder>")`; the file name must match the
folder name.
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import f1_score

_DESCRIPTION = "F1: the harmonic mean of precision and recall, 2 * (P * R) / (P + R)."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels.
    references (`list` of `int`): true labels.
    labels (`list` of `int`): labels to include (e.g. only the classes present). Defaults to None.
    pos_label (`int`): the positive class when `average="binary"`. Defaults to 1.
    average (`str`): "binary", "micro", "macro", "weighted", "samples" or None (per class).
    sample_weight (`list` of `float`): sample weights. Defaults to None.
    zero_division: value when precision + recall is 0 ("warn", 0, 1 or nan). Defaults to "warn".
Returns:
    f1 (`float` or `list` of `float`): the F1 score, per class when `average=None`.
"""

_CITATION = "Pedregosa et al., Scikit-learn: Machine Learning in Python, JMLR 12, 2011."


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
            reference_urls=[
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html"
            ],
        )

    def _compute(
        self,
        predictions,
        references,
        labels=None,
        pos_label=1,
        average="binary",
        sample_weight=None,
        zero_division="warn",
    ):
        score = f1_score(
            references,
            predictions,
            labels=labels,
            pos_label=pos_label,
            average=average,
            sample_weight=sample_weight,
            zero_division=zero_division,
        )
        score = np.asarray(score, dtype=float)
        return {"f1": float(score) if score.ndim == 0 else score.tolist()}
