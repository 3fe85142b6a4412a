"""What a manifest's decisions say about the shipped model's speed, read the one way tests need it.

Tests never time a model against a bar of their own (a loaded CI host moves any such number);
they check what the converter decided from its own interleaved race, which is what it promises:
the shipped model was not measured slower than the source beyond that race's noise.
"""

from __future__ import annotations

from sdk.manifest import Decision, Manifest


def assert_shipped_not_slower(manifest: Manifest) -> Decision:
    """The validate step chose a model that it did not measure slower, and recorded that race;
    returns its "measured against the source" decision."""
    validate = [d for d in manifest.decisions if d.step == "validate"]
    chosen = [d for d in validate if ": chosen" in d.choice]
    assert len(chosen) == 1, [d.choice for d in validate]
    kept_slower = [d.choice for d in validate if "although measured slower" in d.choice]
    assert not kept_slower, kept_slower
    [measured] = [d for d in validate if d.choice == "measured against the source"]
    assert measured.measured["latency_vs_source"] is not None
    assert measured.measured["latency_noise"] is not None
    latency = manifest.metrics.latency_ms
    assert latency is not None and latency.host_measured and latency.source > 0 and latency.converted > 0
    return measured
