"""METHODS: the method names of params.yaml mapped to their classes (one file each in this
package; their settings are in settings.py, whose SETTINGS has the same names)."""

from pipeline.methods.confident_learning import ConfidentLearning
from pipeline.methods.dir import DIR
from pipeline.methods.distill import DML, KD, LGTM, MetaDistill, ProKT
from pipeline.methods.dlf import DLF
from pipeline.methods.erm import ERM
from pipeline.methods.focal import Focal
from pipeline.methods.l2rw import L2RW
from pipeline.methods.l2rw_baselines import (
    Bootstrap,
    CleanOnly,
    HardMining,
    OracleWeighted,
    Proportion,
    RandomWeights,
    Resample,
)
from pipeline.methods.loss_baselines import LargeMargin, Smooth01, SoftmaxMargin
from pipeline.methods.mpl import MetaPseudoLabels
from pipeline.methods.mwn import MetaWeightNet
from pipeline.methods.reduced_mpl import NoisyStudent, ReducedMPL
from pipeline.methods.semi_supervised import UDA, PseudoLabel
from pipeline.methods.spl import SelfPaced

METHODS = {
    "erm": ERM,
    "l2rw": L2RW,
    "random": RandomWeights,
    "proportion": Proportion,
    "resample": Resample,
    "hard_mining": HardMining,
    "bootstrap": Bootstrap,
    "weighted": OracleWeighted,
    "clean_only": CleanOnly,
    "confident_learning": ConfidentLearning,
    "dir": DIR,
    "focal": Focal,
    "spl": SelfPaced,
    "mwn": MetaWeightNet,
    "dlf": DLF,
    "smooth_01": Smooth01,
    "large_margin": LargeMargin,
    "softmax_margin": SoftmaxMargin,
    "mpl": MetaPseudoLabels,
    "pseudo_label": PseudoLabel,
    "uda": UDA,
    "reduced_mpl": ReducedMPL,
    "noisy_student": NoisyStudent,
    "kd": KD,
    "dml": DML,
    "prokt": ProKT,
    "meta_distill": MetaDistill,
    "lgtm": LGTM,
}
