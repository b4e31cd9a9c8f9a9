"""The shared teaching core: the student and the pieces every teaching method is built from."""

import warnings

# torch's forward-mode AD loads its decompositions through torch.jit.script, which warns on
# every process that computes a tangent (every teaching method does); the warning is about
# torch's internals, not this code, so it is silenced here, where forward AD is used.
warnings.filterwarnings(
    "ignore", message="`torch.jit.script` is deprecated", category=FutureWarning
)
