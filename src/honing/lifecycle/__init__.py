"""Keeping a fine-tuned model alive: compare runs, gate releases, re-fine-tune on a new base model or data
version, and watch today's inputs for drift.

* :func:`honing.lifecycle.compare.compare_runs` -> ``Comparison`` (``hone compare``)
* :func:`honing.lifecycle.gate.evaluate_gate` -> ``GateVerdict``: a pure function of evaluation results
  (``hone eval --gate``; the service checks it before promoting a model)
* :func:`honing.lifecycle.retrain.retrain` -> ``RetrainResult`` (``hone retrain``), with
  :func:`honing.lifecycle.datadiff.diff_data`
* :func:`honing.lifecycle.drift.drift` -> ``DriftReport`` (``hone drift``)

Submodules are imported on use: the gate needs neither torch nor a model.
"""
