"""The manifest's smoke test: run its sample input and compare with the output it was converted with."""

from __future__ import annotations

import numpy as np

from agent.runtimes.base import ModelRuntime
from sdk.errors import EdgeError, ModelStoreError


class SmokeTestError(ModelStoreError):
    """The model loads but does not reproduce its manifest's smoke output."""


def run_smoke_test(runtime: ModelRuntime) -> None:
    """Raise :class:`SmokeTestError` unless every smoke output matches within the manifest's tolerances."""
    manifest = runtime.manifest
    smoke = manifest.smoke
    if smoke is None:
        raise SmokeTestError(f"{manifest.name} {manifest.version} has no smoke test in its manifest")
    try:
        inputs = {name: t.to_numpy() for name, t in smoke.inputs.items()}
        expected = {name: t.to_numpy() for name, t in smoke.outputs.items()}
        actual = runtime.run(inputs, list(expected))
    except EdgeError as exc:
        raise SmokeTestError(
            f"smoke test of {manifest.name} {manifest.version} failed to run: {exc}"
        ) from None
    for name, want in expected.items():
        got = np.asarray(actual[name])
        if got.shape != want.shape:
            raise SmokeTestError(
                f"smoke test of {manifest.name} {manifest.version}: output {name} has shape {list(got.shape)},"
                f" expected {list(want.shape)}"
            )
        if want.dtype == object:
            same = [bytes(a, "utf-8") if isinstance(a, str) else a for a in got.reshape(-1)] == list(
                want.reshape(-1)
            )
            if not same:
                raise SmokeTestError(
                    f"smoke test of {manifest.name} {manifest.version}: output {name} differs"
                )
            continue
        got64, want64 = got.astype(np.float64), want.astype(np.float64)
        if not np.allclose(got64, want64, rtol=smoke.rtol, atol=smoke.atol, equal_nan=True):
            worst = float(np.max(np.abs(got64 - want64))) if got.size else 0.0
            raise SmokeTestError(
                f"smoke test of {manifest.name} {manifest.version}: output {name} differs by up to {worst:.3g}"
                f" (rtol {smoke.rtol}, atol {smoke.atol})"
            )
