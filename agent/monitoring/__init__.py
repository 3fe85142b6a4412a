"""Model monitoring on the device (issue 9): ground truth joined by request id, rolling-window
performance, prediction drift, data quality, bias, and shadow evaluation. Only aggregates over at
least k samples leave the device (:mod:`agent.monitoring.privacy`)."""
