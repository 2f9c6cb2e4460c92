"""``import cdeblend`` is cheap, and every public name still resolves to its module's object."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import cdeblend


def test_import_pulls_in_no_scipy_astropy_or_kernels():
    code = (
        "import sys, cdeblend\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('scipy', 'astropy', 'matplotlib')"
        " or m.startswith('cdeblend._')]\n"
        "print(','.join(sorted(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_every_public_name_is_its_modules_object():
    for name in cdeblend.__all__:
        if name == "__version__":
            continue
        module = importlib.import_module(f"cdeblend.{cdeblend._EXPORTS[name]}")
        assert getattr(cdeblend, name) is getattr(module, name), name
    assert set(cdeblend.__all__) - {"__version__"} == set(cdeblend._EXPORTS)
    assert set(cdeblend.__all__) <= set(dir(cdeblend))


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Deblendr'"):
        cdeblend.Deblendr  # noqa: B018


def test_submodules_are_attributes():
    assert cdeblend.display is importlib.import_module("cdeblend.display")
    with pytest.raises(AttributeError):
        cdeblend._adam_cy_missing  # noqa: B018
