"""Confusion matrix as a local `evaluate` module (hfxray copy, works with the Hub unreachable).

Same inputs and output as the Hub's `evaluate-metric/confusion_matrix`, so
`hfxray.metrics.load_metric` can hand out either one. Loaded by `evaluate.load("<this folder>")`;
the file name must match the folder name.
"""

import datasets
import evaluate
from sklearn.metrics import confusion_matrix

_DESCRIPTION = "Confusion matrix: entry [i, j] counts samples whose true label is i and prediction is j."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels.
    references (`list` of `int`): true labels.
    labels (`list` of `int`): row/column order; pass every class so absent ones keep their row.
    sample_weight (`list` of `float`): sample weights. Defaults to None.
    normalize (`str`): None, "true", "pred" or "all". Defaults to None (counts).
Returns:
    confusion_matrix (`numpy.ndarray`): rows = true labels, columns = predicted labels.
"""

_CITATION = "Pedregosa et al., Scikit-learn: Machine Learning in Python, JMLR 12, 2011."


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ConfusionMatrix(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
            reference_urls=[
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.confusion_matrix.html"
            ],
        )

    def _compute(self, predictions, references, labels=None, sample_weight=None, normalize=None):
        cm = confusion_matrix(
            references, predictions, labels=labels, sample_weight=sample_weight, normalize=normalize
        )
        return {"confusion_matrix": cm}
