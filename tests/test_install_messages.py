"""Every message about a missing extra quotes the one install line (keras_wgsef._install)."""

from __future__ import annotations

import importlib.util

import pytest

from keras_wgsef._install import EXTRAS, INSTALL, install_hint, install_line


def test_the_install_line_is_the_clones_with_the_whole_flows_extras():
    assert INSTALL == 'pip install ".[export,micro,data]"' == install_line(*EXTRAS)
    assert "clone of the keras-wgsef repository" in install_hint("micro")


def test_tensorboard_logging_without_a_writer_names_the_tensorboard_extra(monkeypatch):
    from keras_wgsef.monitor import scalar_writer

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in ("tensorflow", "tensorboardX") else real(name, *a)
    )
    with pytest.raises(ImportError, match=r'`tensorboard` extra, `pip install "\.\[tensorboard\]"`'):
        scalar_writer("logs")


def test_tflite_export_names_the_export_extra_for_conversion(monkeypatch):
    import tflite_export

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name, *a))
    monkeypatch.delitem(tflite_export.__dict__, "to_tflite_int8", raising=False)
    with pytest.raises(
        ImportError, match=r'needs tensorflow, not installed: the `export` extra, `pip install "\.\[export\]"`'
    ):
        _ = tflite_export.to_tflite_int8  # the package __getattr__ raises
