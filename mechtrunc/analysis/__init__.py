"""Analyses of one model through the core: evaluation and sweeps, direct logit attribution,
generic-token directions, activation and path patching, lenses, held-out selection, gradient
circuit discovery (attribution patching, EAP-IG, faithfulness) and the figures that show them.

:mod:`~mechtrunc.analysis.circuits` sits above :mod:`~mechtrunc.analysis.patching` (its estimates
are checked against exact patching); the other modules are independent of each other.  This
package re-exports nothing: import from the module (``mt.*`` is the public facade).
"""
