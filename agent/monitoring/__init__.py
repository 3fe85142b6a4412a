"""Model monitoring on the device (issue 9): ground truth joined by request id (:mod:`.ledger`),
rolling-window performance, prediction drift, data quality and bias (:mod:`.monitor`, with the
pure figures in :mod:`.scores`), and shadow evaluation (:mod:`.shadow`). Only aggregates over at
least k samples leave the device; a smaller group is reported as suppressed."""
