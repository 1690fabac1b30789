"""What a person would rather look at than read, in one place.

* :mod:`.plots`: the training curves, conv1's kernels (the paper's figure 3), and the one helper
  that writes every PNG (atomically, without pyplot or a display).
* :mod:`.paper`: the paper's figure 1 (ReLU vs tanh training curves) and figure 4 (top-5 bars and
  the nearest training images in fc7 space).
* :mod:`.report`: one self-contained HTML page per run, gathering the above with the recipe and
  the metrics.
"""
