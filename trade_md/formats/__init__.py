"""trade-md's files, one module per format; every writer goes through a temp file and an atomic rename.

- :mod:`trade_md.formats.files`: atomic writes, JSON reading with one-line errors, package versions for records.
- :mod:`trade_md.formats.checkpoint`: a trained generator (weights + config + system fingerprint) and
  :func:`~trade_md.formats.checkpoint.load_generator`, which imports no training code.
- :mod:`trade_md.formats.dataset`: MD frames at one temperature (``trade-md md``, ``trade-md remd-data``).
- :mod:`trade_md.formats.reference`: replica-exchange / umbrella reference summaries and their frames.
- :mod:`trade_md.formats.remd`: a replica-exchange run (run record, NetCDF storage, backup and recovery, checks).
- :mod:`trade_md.formats.umbrella`: an umbrella-sampling run (settings, run record, window checkpoints).
"""
