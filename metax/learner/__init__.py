"""Meta-learning algorithms: how the meta-gradient or meta-update is obtained."""

from metax.learner.base import MetaLearner
from metax.learner.base import MetaLearnerState
from metax.learner.base import TaskOutcome
from metax.learner.maml import MAML
from metax.learner.maml import ModelAgnosticMetaLearning

__all__ = [
    "MAML",
    "MetaLearner",
    "MetaLearnerState",
    "ModelAgnosticMetaLearning",
    "TaskOutcome",
]
