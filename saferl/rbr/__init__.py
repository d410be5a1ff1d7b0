"""Rule-based rewards (Mu et al. 2024; docs/algorithms.md §6): spec, gold data, features, fit, metrics.

* :func:`load_spec` reads the release's ``proposition_prompts.yaml`` format into an
  :class:`RBRSpec` (propositions, derived propositions, the ordered completion classes per
  response type); :meth:`RBRSpec.completion_class` classes a labelled completion.
* :func:`load_gold` reads human-labelled gold data (jsonl, one boolean per simple proposition).
* :func:`rbr_features` compiles a response type into the feature map of its linear RBR
  (its propositions and its five class features); the tensor math is :mod:`saferl.core.rbr`.
* :func:`fit_rbr_weights` fits the weights by the hinge loss over ranked completions;
  :class:`LinearRBR` holds one linear RBR per response type.
* :func:`behaviour_metrics` / :func:`labelled_metrics`: Not-Unsafe, Not-Overrefuse, F1,
  Hard-Refusal-Style.
* :mod:`saferl.rbr.lm_grader` grades propositions with any causal LM (``P(yes)/(P(yes)+P(no))``);
  :mod:`saferl.rbr.world` is the built-in world's own spec, exact (or noisy) grader and exact
  metrics (import them by name: the world module loads the world and transformers).

The package reads a release from a path it is given; it ships none of the release's texts.
"""

from saferl.rbr.errors import GoldDataError, SpecError
from saferl.rbr.features import RBRFeatures, rbr_features
from saferl.rbr.fit import RBRFitResult, fit_rbr_weights
from saferl.rbr.gold import GoldRecord, Message, load_gold
from saferl.rbr.metrics import (
    BehaviourMetrics,
    behaviour_metrics,
    class_distribution,
    labelled_metrics,
)
from saferl.rbr.reward import LinearRBR
from saferl.rbr.spec import RBRSpec, response_type_key
from saferl.rbr.spec_file import load_spec, spec_from_mapping

__all__ = [
    "BehaviourMetrics",
    "GoldDataError",
    "GoldRecord",
    "LinearRBR",
    "Message",
    "RBRFeatures",
    "RBRFitResult",
    "RBRSpec",
    "SpecError",
    "behaviour_metrics",
    "class_distribution",
    "fit_rbr_weights",
    "labelled_metrics",
    "load_gold",
    "load_spec",
    "rbr_features",
    "response_type_key",
    "spec_from_mapping",
]
