"""Third-party failures (onnx, onnxruntime, torch) mapped into the sdk error tree in one place."""

from __future__ import annotations

from sdk.errors import ConversionError


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def tool_failure(what: str, exc: BaseException) -> ConversionError:
    """``raise tool_failure("fp16 conversion", exc) from None``: one line naming the step and the cause."""
    return ConversionError(f"{what} failed: {type(exc).__name__}: {first_line(exc)}")
