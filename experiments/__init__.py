"""One-off probes: the measurements behind particular findings in docs/ (docs/history.md,
docs/refine.md, docs/adapt.md), kept runnable so that those figures can be made again.

Each runs from the repository root as ``python -m experiments.NAME`` (``--help`` lists its
options): autoencoder_ceiling, linear_ceiling, decoder_adapt, refine, recipe_race.
"""
