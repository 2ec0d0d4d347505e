"""Meta-modules: which quantities are meta-learned and which are adapted per task."""

from metax.module.base import MetaModule
from metax.module.init import LearnedInit
from metax.module.init import LearnedInitMetaParams
from metax.module.init import LearnedInitMetaState
from metax.module.init import LearnedInitParams
from metax.module.init import LearnedInitState

__all__ = [
    "LearnedInit",
    "LearnedInitMetaParams",
    "LearnedInitMetaState",
    "LearnedInitParams",
    "LearnedInitState",
    "MetaModule",
]
