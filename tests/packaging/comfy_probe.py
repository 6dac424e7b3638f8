"""Checks a contract (JSON on stdin) against the ComfyUI tree given as the first argument; prints the
problems found as a JSON list (empty: every symbol, signature and route is there).

Run with ComfyUI's Python and the tree as the working directory (``test_comfy_contract.py`` does):
importing ComfyUI's modules (as with ``--cpu``) starts no server and touches no GPU.

Contract entries:

* ``{"target": "module:attr.path"}``: the attribute exists.
* ``{"target": ..., "positional": n, "keywords": [...], "method": bool}``: it is callable with ``n``
  positional arguments and those keywords (a method also takes ``self``); a call that would need a
  new required argument or refuse a keyword is a problem. ``"known_keywords": true``: keywords the
  signature lacks are dropped first (the pack filters them the same way).
* ``{"target": "module:Class", "instance_attrs": [...]}``: the class's source uses ``self.<attr>``
  (or assigns ``Class.<attr>``) for each.
* ``{"target": "module:Class", "route": ["POST", "/prompt"], "body": [...]}``: the class's module
  registers that route and reads each body key.
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys


def resolve(target: str):
    module_name, _, path = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in filter(None, path.split(".")):
        obj = getattr(obj, part)
    return obj


def problems(entry: dict) -> list[str]:
    target = entry["target"]
    try:
        obj = resolve(target)
    except (ImportError, AttributeError) as exc:
        return [f"{target}: missing ({type(exc).__name__}: {exc})"]
    found = []
    if "positional" in entry:
        try:
            signature = inspect.signature(obj)
        except (TypeError, ValueError) as exc:
            return [f"{target}: no signature ({exc})"]
        keywords = entry.get("keywords", [])
        if entry.get("known_keywords"):
            keywords = [k for k in keywords if k in signature.parameters]
        args = [None] * (entry["positional"] + (1 if entry.get("method") else 0))
        try:
            signature.bind(*args, **{key: None for key in keywords})
        except TypeError as exc:
            found.append(f"{target}{signature}: cannot be called with {entry['positional']} positional "
                         f"arguments and {sorted(keywords)} ({exc})")
    if "instance_attrs" in entry:
        source = inspect.getsource(obj)
        found += [f"{target}: no attribute {name!r}" for name in entry["instance_attrs"]
                  if f"self.{name}" not in source and f"{obj.__name__}.{name} =" not in source]
    if "route" in entry:  # the whole module: the handler may live outside the class
        source = inspect.getsource(sys.modules[obj.__module__])
        method, path = entry["route"]
        if f'@routes.{method.lower()}("{path}")' not in source:
            found.append(f"{target}: no route {method} {path}")
        found += [f"{target}: {method} {path} does not read {key!r}" for key in entry.get("body", [])
                  if f'"{key}"' not in source]
    return found


def main() -> None:
    sys.path.insert(0, sys.argv[1])
    contract = json.load(sys.stdin)
    # ComfyUI parses its command line only when asked; --cpu keeps model management off any GPU.
    sys.argv[1:] = ["--cpu"]
    importlib.import_module("comfy.options").enable_args_parsing()
    # As main.py does first: ComfyUI's own ``utils`` package, before ``nodes`` puts comfy/ (with its
    # utils.py) at the front of sys.path.
    try:
        importlib.import_module("utils")
    except ImportError:  # a tree without it: nothing to protect
        pass
    print(json.dumps([problem for entry in contract for problem in problems(entry)]))


if __name__ == "__main__":
    main()
