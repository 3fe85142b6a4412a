"""Model runtimes behind one interface; :func:`load_runtime` picks one from the manifest."""

from agent.runtimes.base import ModelRuntime, RuntimeLoadError, load_runtime, runtime_class

__all__ = ["ModelRuntime", "RuntimeLoadError", "load_runtime", "runtime_class"]
