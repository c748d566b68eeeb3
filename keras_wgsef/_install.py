"""How a user installs keras-wgsef and its extras: the one install line every message quotes.

There is no release on a package index: the project is installed from a clone of its repository
(or from a wheel built there with ``python -m build``), with the extras a task needs:

* ``export``: TensorFlow (conversion) and LiteRT (the int8 interpreter): Linux, macOS, Windows;
* ``micro``: TFLite Micro (arena, instruction counts, accuracy on the microcontroller runtime):
  Linux x86_64 wheels only; instruction counts also need valgrind (``apt-get install valgrind``);
* ``data``: the bundled datasets of the examples; ``plots``: matplotlib; ``tensorboard``.

Example:
  >>> INSTALL
  'pip install ".[export,micro,data]"'
  >>> install_line("micro")
  'pip install ".[micro]"'
"""

from __future__ import annotations

__all__ = ["EXTRAS", "INSTALL", "VALGRIND_HINT", "install_hint", "install_line"]

#: the extras of the whole flow: train, shrink, convert, measure on LiteRT and TFLite Micro, the examples' data
EXTRAS = ("export", "micro", "data")
#: what instruction counts need besides the ``micro`` extra
VALGRIND_HINT = "install valgrind (apt-get install valgrind)"


def install_line(*extras: str) -> str:
    """The pip command that installs keras-wgsef with ``extras`` (default :data:`EXTRAS`), run in a clone.

    Example:
      >>> install_line("export", "plots")
      'pip install ".[export,plots]"'
    """
    return f'pip install ".[{",".join(extras or EXTRAS)}]"'


def install_hint(*extras: str) -> str:
    """:func:`install_line` with where to run it: the sentence error messages end with.

    Example:
      >>> install_hint("plots")
      '`pip install ".[plots]"` in a clone of the keras-wgsef repository (or install its wheel with [plots])'
    """
    names = ",".join(extras or EXTRAS)
    return f"`{install_line(*extras)}` in a clone of the keras-wgsef repository (or install its wheel with [{names}])"


#: the install line of the whole flow, from a clone of the repository
INSTALL = install_line()
