"""Meta-modules: which quantities are meta-learned and which are adapted per task."""

from metax.module.anil import ANIL
from metax.module.anil import AlmostNoInnerLoop
from metax.module.anil import AlmostNoInnerLoopMetaParams
from metax.module.anil import AlmostNoInnerLoopMetaState
from metax.module.anil import AlmostNoInnerLoopParams
from metax.module.anil import AlmostNoInnerLoopState
from metax.module.base import MetaModule
from metax.module.cavia import CAVIA
from metax.module.cavia import CAVIAMetaParams
from metax.module.cavia import CAVIAMetaState
from metax.module.cavia import CAVIAParams
from metax.module.cavia import CAVIAState
from metax.module.compsyn import ComplexSynapse
from metax.module.compsyn import ComplexSynapseMetaParams
from metax.module.compsyn import ComplexSynapseMetaState
from metax.module.compsyn import ComplexSynapseParams
from metax.module.compsyn import ComplexSynapseState
from metax.module.gainmod import GainMod
from metax.module.gainmod import GainModMetaParams
from metax.module.gainmod import GainModMetaState
from metax.module.gainmod import GainModParams
from metax.module.gainmod import GainModState
from metax.module.init import LearnedInit
from metax.module.init import LearnedInitMetaParams
from metax.module.init import LearnedInitMetaState
from metax.module.init import LearnedInitParams
from metax.module.init import LearnedInitState

__all__ = [
    "ANIL",
    "AlmostNoInnerLoop",
    "AlmostNoInnerLoopMetaParams",
    "AlmostNoInnerLoopMetaState",
    "AlmostNoInnerLoopParams",
    "AlmostNoInnerLoopState",
    "CAVIA",
    "CAVIAMetaParams",
    "CAVIAMetaState",
    "CAVIAParams",
    "CAVIAState",
    "ComplexSynapse",
    "ComplexSynapseMetaParams",
    "ComplexSynapseMetaState",
    "ComplexSynapseParams",
    "ComplexSynapseState",
    "GainMod",
    "GainModMetaParams",
    "GainModMetaState",
    "GainModParams",
    "GainModState",
    "LearnedInit",
    "LearnedInitMetaParams",
    "LearnedInitMetaState",
    "LearnedInitParams",
    "LearnedInitState",
    "MetaModule",
]
