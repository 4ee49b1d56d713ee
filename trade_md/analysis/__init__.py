"""Estimators and reports that know nothing about training: MBAR (:mod:`~trade_md.analysis.mbar`), importance-
sampling metrics (:mod:`~trade_md.analysis.metrics`), plots (:mod:`~trade_md.analysis.plots`)."""
