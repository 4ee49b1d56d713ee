"""Estimators and reports that know nothing about training: MBAR (:mod:`~trade_md.analysis.mbar`), importance-
sampling metrics (:mod:`~trade_md.analysis.metrics`), plots (:mod:`~trade_md.analysis.plots`), the replica-exchange
and umbrella references (:mod:`~trade_md.analysis.remd`, :mod:`~trade_md.analysis.umbrella`), and the evaluation of
a generator against a reference (:mod:`~trade_md.analysis.evaluation`, :mod:`~trade_md.analysis.evaluation_report`).
"""
