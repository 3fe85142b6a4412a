"""Alerts on what devices report about their models: drift, accuracy, bias and latency (issue 9).

``rules`` decides from one window of one model version whether a rule is breached; ``store``
keeps each alert's state (pending -> firing -> resolved) in the database as telemetry is ingested;
``webhook`` sends the changes to an Alertmanager-style receiver off the ingest thread.
"""
