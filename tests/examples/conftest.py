"""Shared by the example tests: each runs offline in its own directory with its own data cache."""

import subprocess
import urllib.request

import pytest


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """EMBER_DATA points into tmp_path (Ember's real data cache is not touched), the working
    directory is tmp_path (a default runs/ directory lands there) and nothing is downloaded."""
    monkeypatch.setenv("EMBER_DATA", str(tmp_path / "ember-cache"))
    monkeypatch.chdir(tmp_path)

    def offline(*args, **kwargs):
        raise AssertionError("tests must not download anything")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(subprocess, "run", offline)
