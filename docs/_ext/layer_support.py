"""Writes the layer-support table of the docs from the channel-rule registry and the layer census.

For every class of ``keras.layers``: the rule the registry gives it
(:mod:`keras_wgsef.graph.rules`; a rule that depends on the layer's configuration is resolved on
the class's minimal model of ``tests/layer_census.py``), what the rule does with channels, and
where the class lands in the pipeline a user runs (``TABLE`` of
``tests/test_every_layer_pipeline.py``, which the test suite asserts class by class). Nothing in
the table is written by hand: a new rule or a changed census changes the page.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

#: what each rule class does with channels, by the first matching base class (order matters)
_KINDS = (
    ("Refuse", "refused"),
    ("Opaque", "keeps its channels"),
    ("InferenceIdentity", "identity at inference"),
    ("Carry", "carries channels one to one"),
)
_MODULE_KINDS = {
    "keras_wgsef.graph.rule_producers": "makes channels (groups)",
    "keras_wgsef.graph.rule_passing": "passes channels",
}
_STAGES = {
    "train+shrink+export": "trains, shrinks, int8 on LiteRT",
    "train+shrink": "trains and shrinks; no int8 kernel",
    "refused": "refused by name",
}


def _kind(rule: Any) -> str:
    for base in type(rule).__mro__:
        for name, kind in _KINDS:
            if base.__name__ == name:
                return kind
    return _MODULE_KINDS.get(type(rule).__module__, "other")


def _layer_in(model: Any, cls: type) -> Any:
    """The first layer of class ``cls`` in ``model``, searched through nested models and wrappers."""
    stack = list(model.layers)
    while stack:
        layer = stack.pop(0)
        if type(layer) is cls:
            return layer
        stack.extend(getattr(layer, "layers", []) or [])
        for attr in ("layer", "forward_layer"):
            inner = getattr(layer, attr, None)
            if inner is not None:
                stack.append(inner)
    raise LookupError(f"no {cls.__name__} in the census model")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def rows() -> list[tuple[str, str, str, str, str]]:
    """``(class, rule, what it does, configuration-dependent, pipeline outcome)`` per layer class."""
    sys.path.insert(0, str(ROOT / "tests"))
    import keras
    from layer_census import builders
    from test_every_layer_pipeline import TABLE

    from keras_wgsef.graph import rules

    rules._ensure_builtin_rules()
    make = builders()
    out = []
    for name in sorted(TABLE):
        cls = getattr(keras.layers, name)
        entry = rules._REGISTRY[cls]
        dynamic = not isinstance(entry, rules.ChannelRule)
        rule = entry(_layer_in(make[name](), cls)) if dynamic else entry
        what = _kind(rule)
        reason = getattr(rule, "reason", "")
        if reason:
            what = f"{what}: {reason}"
        stage, why = TABLE[name]
        outcome = _STAGES[stage] + (f" ({why})" if why and stage != "refused" else "")
        out.append((name, type(rule).__name__, what, "yes" if dynamic else "", outcome))
    return out


def rule_classes() -> list[tuple[str, str]]:
    """``(rule class, first line of its docstring)`` for the rule classes the registry uses."""
    from keras_wgsef.graph import rules

    out = []
    for name, obj in sorted(vars(rules).items()):
        if inspect.isclass(obj) and issubclass(obj, rules.ChannelRule) and obj is not rules.ChannelRule:
            doc = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", inspect.getdoc(obj) or "")
            out.append((name, doc.split("\n\n")[0].replace("\n", " ")))
    return out


def page() -> str:
    table = rows()
    counts: dict[str, int] = {}
    for r in table:
        key = r[4].split(" (")[0]
        counts[key] = counts.get(key, 0) + 1
    lines = [
        f"{len(table)} layer classes of `keras.layers`: "
        + "; ".join(f"**{n}** {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        + ".",
        "",
        "| class | rule | what it does with channels | depends on the configuration | in the pipeline |",
        "|---|---|---|---|---|",
        *(f"| `{c}` | `{r}` | {_cell(w)} | {d} | {_cell(o)} |" for c, r, w, d, o in table),
        "",
        "## The rule classes",
        "",
        "| rule | what it does |",
        "|---|---|",
        *(f"| `{n}` | {_cell(d)} |" for n, d in rule_classes()),
        "",
    ]
    return "\n".join(lines)
