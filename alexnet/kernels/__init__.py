"""The kernels behind the network's default operations: local response normalisation.

``lrn_cpu`` (C, built on first use by ``cbuild``), ``lrn_triton`` (CUDA) and ``lrn_autograd``
(eager torch, the closed-form backward) each compute the formula of section 3.3;
:func:`alexnet.lrn.local_response_norm` picks one per input. ``tests/test_kernels.py`` checks
each against the formula in NumPy and against torch's LRN. The training step's optional speed
levers live apart, in :mod:`alexnet.speed`.
"""
