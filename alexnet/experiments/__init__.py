"""The paper's claims as experiments a user can rerun (``alexnet experiment``).

* :mod:`.figure1`: figure 1 (section 3.1), steps to a training-error level with ReLU vs tanh, on
  the four-layer CNN of :mod:`.four_layer` or on the small AlexNet.
* :mod:`.ablations`: the base recipe and one variant per feature the paper credits, several seeds
  each, tabulated beside the paper's reported effect.
* :mod:`.runs`: what both share: the data (built-in by default) and runs that resume after an
  interruption, so that rerunning an experiment continues where it stopped.
"""
