"""Meta-learning algorithms: how the meta-gradient or meta-update is obtained."""

from metax.learner.baselines import Classifier
from metax.learner.baselines import finetune_head
from metax.learner.baselines import init_classifier
from metax.learner.baselines import pretrain_classifier
from metax.learner.baselines import train_classifier
from metax.learner.baselines import train_from_scratch
from metax.learner.base import MetaLearner
from metax.learner.base import MetaLearnerState
from metax.learner.base import TaskOutcome
from metax.learner.eqprop import EquilibriumPropagation
from metax.learner.eqprop import SymmetricEquilibriumPropagation
from metax.learner.evolution import Evosax
from metax.learner.evolution import EvolutionState
from metax.learner.implicit import ConjugateGradient
from metax.learner.implicit import ImplicitDifferentiation
from metax.learner.implicit import RecurrentBackpropagation
from metax.learner.implicit import T1T2
from metax.learner.inner_loop import InnerLoop
from metax.learner.learned_kernel import LearnedKernel
from metax.learner.learned_optimizer import LearnedOptimizerHParams
from metax.learner.learned_optimizer import WithLearnedOptimizer
from metax.learner.linear_solve import solve_bicgstab
from metax.learner.linear_solve import solve_cg
from metax.learner.linear_solve import solve_gmres
from metax.learner.linear_solve import solve_identity
from metax.learner.linear_solve import solve_neumann
from metax.learner.maml import MAML
from metax.learner.maml import ModelAgnosticMetaLearning
from metax.learner.reptile import BufferedReptile
from metax.learner.reptile import Reptile
from metax.learner.supervised import fit
from metax.learner.supervised import gradient_step

__all__ = [
    "BufferedReptile",
    "Classifier",
    "ConjugateGradient",
    "EquilibriumPropagation",
    "EvolutionState",
    "Evosax",
    "ImplicitDifferentiation",
    "InnerLoop",
    "LearnedKernel",
    "LearnedOptimizerHParams",
    "MAML",
    "MetaLearner",
    "MetaLearnerState",
    "ModelAgnosticMetaLearning",
    "RecurrentBackpropagation",
    "Reptile",
    "SymmetricEquilibriumPropagation",
    "T1T2",
    "TaskOutcome",
    "WithLearnedOptimizer",
    "finetune_head",
    "fit",
    "gradient_step",
    "init_classifier",
    "pretrain_classifier",
    "solve_bicgstab",
    "solve_cg",
    "solve_gmres",
    "solve_identity",
    "solve_neumann",
    "train_classifier",
    "train_from_scratch",
]
