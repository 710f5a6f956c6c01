"""Synthesised training pairs with new semantics and their hybrid selection (FVE, ../shared/spec/data_synthesis.md).

``generator``: the :class:`PairGenerator` protocol and ANet-CapProxy's exact event edit; ``selection``: the three
signals (cross-modal relevance, uni-modal structure, model performance) and their combination; ``corpus``: the
builder of the candidate collection and the writer of selected splits (``scripts/build_capproxy.py synthesize`` /
``select``).
"""
