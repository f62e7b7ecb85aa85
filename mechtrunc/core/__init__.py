"""The core: one door to every model, the edits made through it, and what runs prompts through it.

From the bottom: prompt sets, result schemas and reference numbers (:mod:`~mechtrunc.core.prompts`,
:mod:`~mechtrunc.core.results`, :mod:`~mechtrunc.core.reference`) and task metrics
(:mod:`~mechtrunc.core.metrics`); architecture primitives on raw weights and their SVDs
(:mod:`~mechtrunc.core.stacks`, :mod:`~mechtrunc.core.decomposition`); the adapter, the only
module that knows an architecture (:mod:`~mechtrunc.core.adapters`); the interventions
(:mod:`~mechtrunc.core.interventions`); forward passes over prompt sets
(:mod:`~mechtrunc.core.runner`); the LASER grid engine (:mod:`~mechtrunc.core.engine`).  This
package re-exports nothing: import from the module (``mt.*`` is the public facade).
"""
