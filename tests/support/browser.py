"""Headless Chromium for the browser tests: one path, one set of flags, one skip rule.

The flags keep Chromium from calling home (updates, sync, background fetches), so a test that
fails on any request to another host fails only for what the page itself asked for."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: marks for a module or test that drives Chromium
needs_chromium = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed"),
]


F = TypeVar("F", bound=Callable[..., Any])


def browser_test(test: F) -> F:
    """``needs_chromium`` for one test of a module whose other tests need no browser."""
    for mark in needs_chromium:
        test = mark(test)
    return test


def launch(playwright: Any) -> Any:
    """A headless Chromium browser from a ``sync_playwright()`` handle."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def only_origin(base: str, elsewhere: list[str]) -> Callable[[Any], None]:
    """A ``page.route`` handler that lets through requests to ``base`` and aborts (and records) the rest."""

    def route(r: Any) -> None:
        if r.request.url.startswith(base + "/"):
            r.continue_()
        else:
            elsewhere.append(r.request.url)
            r.abort()

    return route
