"""Write docs/api.md: the API reference, generated from rnndrop's docstrings and signatures.

Documents every name in ``rnndrop.__all__``, ``rnndrop.init.__all__``, ``rnndrop.interop.__all__`` and
``rnndrop.study.__all__``:
classes with their constructor signature, docstring, public methods and properties defined by rnndrop (not those
inherited from ``torch.nn.Module``), dataclass fields; functions with their signature and
docstring. Signatures and docstrings are ``text`` blocks: signatures are not runnable code (a
``python`` block in the docs is a program that tests/ecosystem/test_doc_snippets.py runs), and the
docstrings are reproduced verbatim (they use reST-style markup).

Usage::

    python docs/scripts/gen_api.py            # rewrite docs/api.md
    python docs/scripts/gen_api.py --check    # exit 1 if docs/api.md is out of date

``tests/ecosystem/test_api_docs.py`` runs the check.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import sys
import textwrap
import types
from pathlib import Path

from torch import nn

OUTPUT = Path(__file__).resolve().parents[1] / "api.md"
MODULES = ("rnndrop", "rnndrop.init", "rnndrop.interop", "rnndrop.study")
WIDTH = 100  # longer signatures get one parameter per line

SECTIONS = (
    ("Recurrent layers", lambda o: inspect.isclass(o) and o.__name__ in ("LSTM", "GRU", "RNN", "RecurrentBase")),
    ("Sequence dropout modules and functions", lambda o: getattr(o, "__module__", "") == "rnndrop.dropout"),
    ("Monte-Carlo dropout", lambda o: getattr(o, "__module__", "") == "rnndrop.inference"),
    ("Dropout masks", lambda o: getattr(o, "__module__", "") == "rnndrop.masks"),
    ("Initialisation", lambda o: getattr(o, "__module__", "") == "rnndrop.init"),
    ("Keras interop", lambda o: getattr(o, "__module__", "").startswith("rnndrop.interop")),
    ("Dropout studies", lambda o: getattr(o, "__module__", "").startswith("rnndrop.study")),
    ("Errors", lambda o: inspect.isclass(o) and issubclass(o, Exception)),
    ("Other", lambda o: True),
)


def _annotation(a: object) -> str:
    # With ``from __future__ import annotations`` annotations are the source strings: print them bare.
    return a if isinstance(a, str) else inspect.formatannotation(a)


def _default(value: object) -> str:
    # A function's repr carries its memory address, which would change the page on every run.
    return f"<function {value.__qualname__}>" if inspect.isfunction(value) else repr(value)


def _param(p: inspect.Parameter) -> str:
    prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
    text = prefix + p.name
    if p.annotation is not p.empty:
        text += f": {_annotation(p.annotation)}"
    if p.default is not p.empty:
        text += (" = " if p.annotation is not p.empty else "=") + _default(p.default)
    return text


def _signature(name: str, obj: object) -> str:
    try:
        sig = inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"{name}(...)"
    params = [p for p in sig.parameters.values() if p.name != "self"]
    parts, star_done = [], False
    for p in params:
        if p.kind is p.KEYWORD_ONLY and not star_done:
            parts.append("*")
        if p.kind in (p.KEYWORD_ONLY, p.VAR_POSITIONAL):
            star_done = True
        parts.append(_param(p))
    ret = "" if sig.return_annotation is sig.empty else f" -> {_annotation(sig.return_annotation)}"
    one_line = f"{name}({', '.join(parts)}){ret}"
    if len(one_line) <= WIDTH:
        return one_line
    return f"{name}(\n" + "".join(f"    {s},\n" for s in parts) + f"){ret}"


def _doc(obj: object) -> list[str]:
    # The object's own docstring only: inspect.getdoc would inherit torch.nn.Module.forward's placeholder
    # ("Define the computation performed at every call.") for a method without one.
    own = getattr(obj, "__doc__", None)
    doc = inspect.cleandoc(own) if isinstance(own, str) else None
    if not doc:
        return []
    summary, _, rest = doc.partition("\n\n")
    lines = [" ".join(summary.split()), ""]
    if rest.strip():
        lines += ["```text", rest.rstrip(), "```", ""]
    return lines


def _members(cls: type, documented: set[type]) -> list[tuple[str, object]]:
    """Public methods and properties that rnndrop defines (torch.nn.Module's own API is skipped).

    Members of a base class that has its own entry are listed there, not repeated here.
    """
    out = []
    for name in sorted(dir(cls)):
        if name.startswith("_") or (name in dir(nn.Module) and name != "forward"):
            continue
        for klass in cls.__mro__:
            if name in vars(klass):
                owner, raw = klass, vars(klass)[name]
                break
        else:
            continue
        if not owner.__module__.startswith("rnndrop") or (owner is not cls and owner in documented):
            continue
        if isinstance(raw, (staticmethod, classmethod)):
            raw = raw.__func__
        if inspect.isfunction(raw) or isinstance(raw, property):
            out.append((name, raw))
    return out


def _render_class(qualname: str, cls: type, documented: dict[type, str]) -> list[str]:
    kind = "exception" if issubclass(cls, BaseException) else "class"
    lines = [f"## `{qualname}`", "", "```text", f"{kind} {_signature(qualname, cls)}", "```", ""]
    bases = [b for b in cls.__bases__ if b is not object]
    if bases:
        names = ", ".join(_link(documented[b]) if b in documented else f"`{b.__module__}.{b.__qualname__}`"
                          for b in bases)
        lines += [f"Bases: {names}", ""]
    lines += _doc(cls)
    if dataclasses.is_dataclass(cls):
        lines += ["**Fields**", ""]
        for f in dataclasses.fields(cls):
            default = "" if f.default is dataclasses.MISSING else f" = {_default(f.default)}"
            lines.append(f"- `{f.name}: {f.type}{default}`")
        lines.append("")
    for name, member in _members(cls, set(documented)):
        if isinstance(member, property):
            lines += [f"### `{qualname}.{name}` *(property)*", "", *_doc(member.fget)]
        else:
            lines += [f"### `{qualname}.{name}`", "", "```text", _signature(name, member), "```", ""]
            lines += _doc(member)
    return lines


def _module_of(module: str) -> object:
    """Stands for a constant when its section is chosen: the module that exports it."""
    return types.SimpleNamespace(__module__=module)


def _render_constant(qualname: str, value: object) -> list[str]:
    """A module-level constant: its value (a mapping's keys, a sequence's items by name where they have one)."""
    def short(v: object) -> str:
        name = getattr(v, "name", None)
        return repr(name) if isinstance(name, str) else repr(v)

    if isinstance(value, dict):
        text = f"{qualname}: dict, keys {', '.join(map(short, value))}"
    elif isinstance(value, (tuple, list)):
        text = f"{qualname} = ({', '.join(map(short, value))})"
    else:
        text = f"{qualname} = {value!r}"
    wrapped = textwrap.fill(text, WIDTH, subsequent_indent="    ", break_long_words=False)
    return [f"## `{qualname}`", "", "```text", wrapped, "```", ""]


def _link(qualname: str) -> str:
    return f"[`{qualname}`](#{_anchor(qualname)})"


def _render_function(qualname: str, fn: object) -> list[str]:
    return [f"## `{qualname}`", "", "```text", _signature(qualname, fn), "```", "", *_doc(fn)]


def _anchor(title: str) -> str:
    """GitHub's heading anchor: lower case, spaces to hyphens, punctuation other than - and _ dropped."""
    return "".join(c for c in title.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def render() -> str:
    entries: list[tuple[str, object]] = []
    seen: set[int] = set()
    version = None
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if name == "__version__":
                version = obj
                continue
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            entries.append((f"{module_name}.{name}", obj))

    documented = {obj: qualname for qualname, obj in entries if inspect.isclass(obj)}
    grouped: dict[str, list[tuple[str, object]]] = {title: [] for title, _ in SECTIONS}
    for qualname, obj in entries:
        # A constant has no __module__ of its own: it belongs where the module that exports it does.
        probe = obj if inspect.isclass(obj) or callable(obj) else _module_of(qualname.rsplit(".", 1)[0])
        title = next(t for t, test in SECTIONS if test(probe))
        grouped[title].append((qualname, obj))

    out = [
        "# API reference",
        "",
        "<!-- Generated by docs/scripts/gen_api.py from the docstrings: do not edit by hand. -->",
        "",
        f"rnndrop {version}. Every public name of `rnndrop`, `rnndrop.init`, `rnndrop.interop` and `rnndrop.study`;",
        "conventions shared by all layers (mask shapes and lifetimes) are in [`rnndrop.masks`](#dropout-masks) and",
        "[dropout.md](dropout.md); migration from torch.nn and Keras in [migration.md](migration.md);",
        "torch.compile, autocast, DDP, export and serialization in [ecosystem.md](ecosystem.md).",
        "",
    ]
    for title, items in grouped.items():
        if items:
            out.append(f"- [{title}](#{_anchor(title)}): " + ", ".join(f"`{q.split('.')[-1]}`" for q, _ in items))
    out.append("")
    for title, items in grouped.items():
        if not items:
            continue
        out += [f"# {title}", ""]
        for qualname, obj in items:
            if inspect.isclass(obj):
                out += _render_class(qualname, obj, documented)
            elif callable(obj):
                out += _render_function(qualname, obj)
            else:
                out += _render_constant(qualname, obj)
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Generate docs/api.md from rnndrop's docstrings.")
    p.add_argument("--check", action="store_true", help="exit 1 if docs/api.md differs from what would be written")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is out of date: run python docs/scripts/gen_api.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
