"""The ComfyUI API surface the pack uses, checked against a ComfyUI tree: the bundled 0.3.75 and, when
``COMFYUI_DIR`` names another tree, that one too (e.g. a clone of current upstream).

Every ComfyUI symbol ``nodes/comfy_adapter.py`` touches is listed in ``ADAPTER`` (a test checks the list
is complete, reading the adapter's source), every ``io``/``ui`` call of the node modules is read from
their source with its keywords, and each must exist in the tree and accept the call the pack makes
(``inspect.signature`` on ComfyUI's own modules, in a subprocess with ComfyUI's Python).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tools.harness.comfy_process import COMFYUI_DIR, HARNESS, REPO

ADAPTER_FILE = REPO / "nodes" / "comfy_adapter.py"
BUNDLED = HARNESS / "ComfyUI"
PROBE = Path(__file__).with_name("comfy_probe.py")

PROMPT_SERVER_ATTRS = ["routes", "loop", "client_id", "prompt_queue", "address", "port", "send_sync", "instance"]


def call(target: str, positional: int, *keywords: str, method: bool = False) -> dict:
    return {"target": target, "positional": positional, "keywords": list(keywords), "method": method}


ADAPTER = {
    "folder_paths.get_output_directory": call("folder_paths:get_output_directory", 0),
    "folder_paths.get_input_directory": call("folder_paths:get_input_directory", 0),
    "folder_paths.get_full_path": call("folder_paths:get_full_path", 2),
    "folder_paths.get_folder_paths": call("folder_paths:get_folder_paths", 1),
    "folder_paths.get_filename_list": call("folder_paths:get_filename_list", 1),
    "folder_paths.get_user_directory": call("folder_paths:get_user_directory", 0),
    "model_management.current_loaded_models": {"target": "comfy.model_management:current_loaded_models"},
    "model_management.get_torch_device": call("comfy.model_management:get_torch_device", 0),
    "model_management.intermediate_device": call("comfy.model_management:intermediate_device", 0),
    "cli_args.disable_metadata": {"target": "comfy.cli_args:args.disable_metadata"},
    "cli_args.tls_keyfile": {"target": "comfy.cli_args:args.tls_keyfile"},
    "cli_args.tls_certfile": {"target": "comfy.cli_args:args.tls_certfile"},
    "get_executing_context": call("comfy_execution.utils:get_executing_context", 0),
    "context.prompt_id": {"target": "comfy_execution.utils:ExecutionContext.prompt_id"},
    "context.node_id": {"target": "comfy_execution.utils:ExecutionContext.node_id"},
    "PromptServer.instance": {"target": "server:PromptServer", "instance_attrs": PROMPT_SERVER_ATTRS},
    "PromptServer.instance.routes": {"target": "server:PromptServer", "instance_attrs": ["routes"]},
    "PromptServer.instance.client_id": {"target": "server:PromptServer", "instance_attrs": ["client_id"]},
    "PromptServer.instance.loop.call_soon_threadsafe": {"target": "server:PromptServer", "instance_attrs": ["loop"]},
    "PromptServer.instance.send_sync": call("server:PromptServer.send_sync", 3, method=True),
    "srv.address": {"target": "server:PromptServer", "instance_attrs": ["address"]},
    "srv.port": {"target": "server:PromptServer", "instance_attrs": ["port"]},
    "POST /prompt": {"target": "server:PromptServer", "route": ["POST", "/prompt"],
                     "body": ["prompt", "prompt_id", "client_id", "extra_data"]},
    "self.queue.get_history": call("execution:PromptQueue.get_history", 0, "prompt_id", "map_function", method=True),
    "self.queue.get_current_queue_volatile": call("execution:PromptQueue.get_current_queue_volatile", 0,
                                                  method=True),
    "PromptServer.instance.prompt_queue.set_flag": call("execution:PromptQueue.set_flag", 2, method=True),
    "self.queue.delete_history_item": call("execution:PromptQueue.delete_history_item", 1, method=True),
    "self.queue.delete_queue_item": call("execution:PromptQueue.delete_queue_item", 1, method=True),
    "model.clone": call("comfy.model_patcher:ModelPatcher.clone", 0, method=True),
    "patched.set_model_unet_function_wrapper": call(
        "comfy.model_patcher:ModelPatcher.set_model_unet_function_wrapper", 1, method=True),
    "patched.add_callback": call("comfy.model_patcher:ModelPatcher.add_callback", 2, method=True),
    "CallbacksMP.ON_PRE_RUN": {"target": "comfy.patcher_extension:CallbacksMP.ON_PRE_RUN"},
    "CallbacksMP.ON_CLEANUP": {"target": "comfy.patcher_extension:CallbacksMP.ON_CLEANUP"},
    "CallbacksMP.ON_DETACH": {"target": "comfy.patcher_extension:CallbacksMP.ON_DETACH"},
    "WrappersMP.APPLY_MODEL": {"target": "comfy.patcher_extension:WrappersMP.APPLY_MODEL"},
    "WrappersMP.DIFFUSION_MODEL": {"target": "comfy.patcher_extension:WrappersMP.DIFFUSION_MODEL"},
    "get_all_wrappers": call("comfy.patcher_extension:get_all_wrappers", 2),
}
"""How the adapter spells each use → what it must find in ComfyUI."""

DUCK_TYPED = [
    {"target": "comfy.model_patcher:ModelPatcher", "instance_attrs": [
        "model_options", "load_device", "patches_uuid", "object_patches", "hook_patches", "current_hooks",
        "model.model_lowvram", "model.current_patcher"]},
    call("comfy.model_base:BaseModel.apply_model", 2, "transformer_options", method=True),
]
"""What ``core.accel.cuda_graph`` and the CUDA-graph node read from a ModelPatcher and its BaseModel (duck-typed,
no import); ``is_dynamic`` is newer ComfyUI's and read only where present."""

ADAPTER_ROOTS = {"folder_paths", "model_management", "cli_args", "PromptServer", "srv", "context", "model",
                 "patched", "CallbacksMP", "WrappersMP", "self.queue"}
"""Names through which the adapter reaches ComfyUI objects (modules, the server, a ModelPatcher)."""
ADAPTER_CALLS = {"get_executing_context", "get_all_wrappers"}


def dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def adapter_uses() -> set[str]:
    """Every ComfyUI use in the adapter, spelled as in ``ADAPTER`` (the longest attribute chain)."""
    tree = ast.parse(ADAPTER_FILE.read_text())
    chains = {name for node in ast.walk(tree) if isinstance(node, ast.Attribute) and (name := dotted(node))}
    rooted = {c for c in chains if c.split(".")[0] in ADAPTER_ROOTS or c.startswith("self.queue.")}
    uses = {c for c in rooted if not any(other.startswith(c + ".") for other in rooted)}
    uses |= {name for node in ast.walk(tree) if isinstance(node, ast.Call) and (name := dotted(node.func))
             in ADAPTER_CALLS}
    routes = {f"POST {node.value}" for node in ast.walk(tree)
              if isinstance(node, ast.Constant) and node.value == "/prompt"}
    return uses | routes | {"PromptServer.instance"}


def versioned_apis() -> tuple[str, ...]:
    tree = ast.parse(ADAPTER_FILE.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "VERSIONED_APIS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("nodes/comfy_adapter.py defines no VERSIONED_APIS")


def api_namespace(tree: Path) -> str:
    """The ``comfy_api`` namespace the adapter imports from this tree (the newest versioned one present)."""
    return next((f"comfy_api.{v}" for v in versioned_apis() if (tree / "comfy_api" / v / "__init__.py").is_file()),
                "comfy_api.latest")


NODE_ALIASES = {"adapter.Choice": "io.Combo.Input", "Choice": "io.Combo.Input"}
SCHEMA_CALL = "adapter.schema"
"""``adapter.schema(**fields)`` builds ``io.Schema`` from the fields this ComfyUI knows."""


def node_api_uses(namespace: str) -> list[dict]:
    """Each ``io``/``ui`` attribute and call of the node modules, with the keywords the pack passes."""
    entries: dict[str, dict] = {}
    for path in sorted((REPO / "nodes").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and (name := dotted(node.func)):
                name = NODE_ALIASES.get(name, name)
                schema = name == SCHEMA_CALL
                if not (schema or name.split(".")[0] in ("io", "ui")) or any(
                        isinstance(a, ast.Starred) for a in node.args) or (
                        not schema and any(k.arg is None for k in node.keywords)):
                    continue
                name = "io.Schema" if schema else name
                entry = entries.setdefault(f"{name}/{len(node.args)}", {
                    "target": f"{namespace}:{name}", "positional": len(node.args), "keywords": [],
                    "known_keywords": schema})
                entry["keywords"] = sorted(set(entry["keywords"]) | {k.arg for k in node.keywords})
            elif isinstance(node, ast.Attribute) and (name := dotted(node)) and name.split(".")[0] in ("io", "ui"):
                entries.setdefault(name, {"target": f"{namespace}:{name}"})
    return list(entries.values())


def contract(tree: Path) -> list[dict]:
    return list(ADAPTER.values()) + DUCK_TYPED + node_api_uses(api_namespace(tree))


def check(tree: Path) -> list[str]:
    result = subprocess.run([sys.executable, str(PROBE), str(tree)], input=json.dumps(contract(tree)), cwd=tree,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_contract_lists_every_comfyui_use_of_the_adapter():
    uses = adapter_uses()
    assert uses - set(ADAPTER) == set(), "add these uses of nodes/comfy_adapter.py to ADAPTER"
    assert set(ADAPTER) - uses == set(), "these ADAPTER entries are no longer used by the adapter"
    assert {"io.Schema", "io.Combo.Input", "io.Int.Input", "io.NodeOutput", "io.Hidden.extra_pnginfo"} <= {
        entry["target"].split(":")[1] for entry in node_api_uses("ns")}


TREES = [pytest.param(BUNDLED, id="bundled-0.3.75")]
if COMFYUI_DIR.resolve() != BUNDLED.resolve():
    TREES.append(pytest.param(COMFYUI_DIR, id="COMFYUI_DIR"))


@pytest.mark.parametrize("tree", TREES)
def test_comfyui_has_every_symbol_route_and_signature_the_pack_uses(tree):
    assert check(tree) == []


def test_the_probe_reports_what_a_tree_lacks():
    """A symbol gone, a new required argument, a refused keyword, a route gone: each is one problem."""
    broken = [call("folder_paths:get_filename_list_gone", 1), call("folder_paths:get_full_path", 1),
              call("comfy.model_management:get_torch_device", 0, "fast"),
              {"target": "server:PromptServer", "route": ["POST", "/prompt_gone"]},
              {"target": "server:PromptServer", "instance_attrs": ["no_such_attribute"]}]
    result = subprocess.run([sys.executable, str(PROBE), str(BUNDLED)], input=json.dumps(broken), cwd=BUNDLED,
                            capture_output=True, text=True, timeout=300)
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(found) == 5, found
    assert "get_filename_list_gone: missing" in found[0] and "cannot be called" in found[1]
    assert "'fast'" in found[2] and "no route POST /prompt_gone" in found[3] and "no_such_attribute" in found[4]
