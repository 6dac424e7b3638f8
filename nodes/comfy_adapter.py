"""The only module that imports ComfyUI (``comfy_api``, ``server``, ``folder_paths``, ``comfy``).

Everything ComfyUI-specific the pack needs goes through here, so an API change upstream is
mended in one place; ``tests/packaging/test_comfy_contract.py`` checks every symbol and route used
here against a ComfyUI tree. The newest versioned ``comfy_api`` namespace present is preferred
(``VERSIONED_APIS``: ``v0_0_3`` in current upstream, ``v0_0_2`` in 0.3.75 and upstream), then
``comfy_api.latest``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
from typing import Any, Callable

import folder_paths
from server import PromptServer

import comfy.model_management as model_management
from comfy.cli_args import args as cli_args

from ..core.loop.decode import VaeDecoder, vae_decoder
from ..core.loop.supervisor import ConfigurationError

VERSIONED_APIS = ("v0_0_3", "v0_0_2")
"""The versioned ``comfy_api`` namespaces the pack is written against, newest first."""


def _comfy_api():
    for version in VERSIONED_APIS:
        try:
            return importlib.import_module(f"comfy_api.{version}")
        except ImportError:
            continue
    return importlib.import_module("comfy_api.latest")


COMFY_API = _comfy_api()
ComfyExtension, io, ui = COMFY_API.ComfyExtension, COMFY_API.io, COMFY_API.ui

try:
    from comfy_execution.utils import get_executing_context
except ImportError:  # pragma: no cover
    from comfy_api.latest import get_executing_context

log = logging.getLogger("dream_window")

__all__ = ["ComfyExtension", "io", "ui", "schema", "Choice", "ComfyBackend", "server", "output_directory",
           "input_directory", "executing_prompt_id", "executing_node_id", "current_client_id",
           "run_on_server_loop", "intermediate_device", "send_event", "routes", "model_path", "models_folders",
           "torch_device", "frame_decoder", "metadata_disabled", "model_files", "stored_settings", "free_models",
           "loaded_models"]

_SCHEMA_FIELDS = set(inspect.signature(io.Schema).parameters)


def schema(**fields: Any) -> "io.Schema":
    """``io.Schema`` with the fields this ComfyUI knows; newer-only ones (``search_aliases``)
    are dropped on older servers instead of failing the whole pack's import."""
    return io.Schema(**{k: v for k, v in fields.items() if k in _SCHEMA_FIELDS})


class Choice(io.Combo.Input):
    """A combo input whose value ComfyUI checks against the options when the workflow is queued.

    ComfyUI 0.3.75 makes that check (one "Value not in list" error naming the input) only for an input
    whose type is the list of options, the original node API's form; a plain V3 combo's type is "COMBO"
    and its value goes unchecked. The frontend reads both forms alike.
    """

    def get_io_type(self):
        return list(self.options)


def server() -> PromptServer:
    return PromptServer.instance


def routes():
    return PromptServer.instance.routes


def output_directory() -> str:
    return folder_paths.get_output_directory()


def input_directory() -> str:
    return folder_paths.get_input_directory()


def model_path(kind: str, name: str) -> str | None:
    return folder_paths.get_full_path(kind, name)


def model_files(kind: str) -> list[str]:
    """The model files of ``kind`` (a models/ folder name such as ``clip_vision``) ComfyUI finds, as the
    names its loaders list."""
    return list(folder_paths.get_filename_list(kind))


def models_folders(kind: str) -> list[str]:
    return list(folder_paths.get_folder_paths(kind))


def metadata_disabled() -> bool:
    """Whether the server runs with ``--disable-metadata`` (no workflow in saved images)."""
    return bool(cli_args.disable_metadata)


def stored_settings() -> dict:
    """ComfyUI's stored settings (what the settings dialog saves through ``POST /settings``): the
    default user's ``comfy.settings.json`` in ComfyUI's user folder, the one file a single-user server
    has (with ``--multi-user`` the server-wide settings are the default user's). ``{}`` when there is
    none; an unreadable file is logged and read as ``{}``."""
    path = os.path.join(folder_paths.get_user_directory(), "default", "comfy.settings.json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("dream_window: cannot read ComfyUI's settings file %s (%s); the Dream Window settings "
                    "take their environment variables or defaults", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def free_models() -> None:
    """Unload every model and free cached memory, as ``POST /free {"unload_models": true, "free_memory":
    true}`` does: flags the prompt worker acts on as soon as it is idle."""
    for flag in ("unload_models", "free_memory"):
        PromptServer.instance.prompt_queue.set_flag(flag, True)


def loaded_models() -> int:
    """How many models ComfyUI's model management holds loaded."""
    return len(model_management.current_loaded_models)


def torch_device():
    return model_management.get_torch_device()


def frame_decoder(vae) -> VaeDecoder:
    """The pack's decode of the workflow's VAE (``core.loop.decode``), with ComfyUI's model management."""
    return vae_decoder(vae, model_management)


def intermediate_device():
    return model_management.intermediate_device()


def executing_prompt_id() -> str | None:
    context = get_executing_context()
    return context.prompt_id if context is not None else None


def executing_node_id() -> str | None:
    """The id of the node executing on this thread (for log lines), or None outside a node."""
    context = get_executing_context()
    return context.node_id if context is not None else None


def current_client_id() -> str | None:
    return PromptServer.instance.client_id


def run_on_server_loop(fn: Callable, *args: Any) -> None:
    """Call ``fn(*args)`` on the server's event loop from the executor thread (never waits)."""
    PromptServer.instance.loop.call_soon_threadsafe(fn, *args)


def send_event(event: str, data: dict, client_id: str | None = None) -> None:
    """Send a websocket event (to one client, or to every client when ``client_id`` is None)."""
    PromptServer.instance.send_sync(event, data, client_id)


def _session_of(prompt: dict, class_type: str, name: str) -> bool:
    return any(isinstance(node, dict) and node.get("class_type") == class_type
               and (node.get("inputs") or {}).get("name") == name for node in prompt.values())


class ComfyBackend:
    """``core.loop.supervisor.LoopBackend`` for a live ComfyUI server."""

    def __init__(self, session_class_type: str):
        self.session_class_type = session_class_type
        self._http = None

    @property
    def queue(self):
        return PromptServer.instance.prompt_queue

    def prompt_result(self, prompt_id: str):
        entry = self.queue.get_history(prompt_id=prompt_id, map_function=lambda h: h.get("status"))
        if prompt_id not in entry:
            return None
        status = entry[prompt_id] or {}
        messages = status.get("messages") or []
        for event, data in messages:
            if event == "execution_interrupted":
                return "interrupted", None
        for event, data in messages:
            if event == "execution_error":
                return "error", {"node_id": data.get("node_id"), "node_type": data.get("node_type"),
                                 "message": str(data.get("exception_message", "")).strip(),
                                 "exception_type": data.get("exception_type")}
        if status.get("status_str") == "error":
            return "error", {"node_id": None, "node_type": None, "message": "the prompt failed"}
        return "success", None

    def session_queued(self, session: str) -> bool:
        running, queued = self.queue.get_current_queue_volatile()
        return any(_session_of(item[2], self.session_class_type, session) for item in list(running) + list(queued))

    def drop_queued(self, session: str) -> int:
        dropped = 0
        while self.queue.delete_queue_item(lambda item: _session_of(item[2], self.session_class_type, session)):
            dropped += 1
        return dropped

    def prompt_queued(self, prompt_id: str) -> bool:
        running, queued = self.queue.get_current_queue_volatile()
        return any(item[1] == prompt_id for item in list(running) + list(queued))

    async def queue_prompt(self, prompt: dict, client_id: str | None, prompt_id: str,
                           extra_pnginfo: dict | None) -> None:
        import aiohttp

        srv = PromptServer.instance
        if not hasattr(srv, "address"):
            raise ConnectionError("ComfyUI's server is not listening yet")
        host = srv.address if srv.address not in (None, "", "0.0.0.0", "::") else "127.0.0.1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        body: dict = {"prompt": prompt, "prompt_id": prompt_id}
        if client_id:
            body["client_id"] = client_id
        if extra_pnginfo:
            body["extra_data"] = {"extra_pnginfo": extra_pnginfo}
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        # The server's own scheme: with --tls-keyfile/--tls-certfile it serves https only. The certificate
        # names the server's public host, not the address dialled here, and the peer is this very process,
        # so it is not verified (ssl=False).
        scheme = "https" if cli_args.tls_keyfile and cli_args.tls_certfile else "http"
        async with self._http.post(f"{scheme}://{host}:{srv.port}/prompt", json=body, ssl=False) as resp:
            data = await resp.json()
            if resp.status != 200:
                error = data.get("error") or {}
                details = "; ".join(f"node {nid}: {e.get('message')} ({e.get('details')})"
                                    for nid, node in (data.get("node_errors") or {}).items()
                                    for e in node.get("errors", []))
                # 400: the workflow failed ComfyUI's validation (a model file gone, a value out of range).
                refused = ConfigurationError if resp.status == 400 else RuntimeError
                raise refused(f"ComfyUI refused the stored workflow: {error.get('message')}"
                              + (f" — {details}" if details else ""))

    def delete_history(self, prompt_id: str) -> None:
        self.queue.delete_history_item(prompt_id)


def clone_with_unet_wrapper(model, wrapper):
    """A clone of ``model`` (a ModelPatcher) whose diffusion-model forwards go through ``wrapper``.

    ``wrapper`` becomes the clone's ``model_function_wrapper`` (``set_model_unet_function_wrapper``);
    its ``on_pre_run``, ``on_cleanup`` and ``on_detach`` become the clone's ``ON_PRE_RUN``,
    ``ON_CLEANUP`` and ``ON_DETACH`` callbacks. The input model is left untouched.
    """
    from comfy.patcher_extension import CallbacksMP

    patched = model.clone()
    patched.set_model_unet_function_wrapper(wrapper)
    patched.add_callback(CallbacksMP.ON_PRE_RUN, wrapper.on_pre_run)
    patched.add_callback(CallbacksMP.ON_CLEANUP, wrapper.on_cleanup)
    patched.add_callback(CallbacksMP.ON_DETACH, wrapper.on_detach)
    return patched


def forward_wrappers(transformer_options: dict) -> list[Callable]:
    """The wrappers ComfyUI runs inside ``BaseModel.apply_model``: apply-model and diffusion-model wrappers."""
    from comfy.patcher_extension import WrappersMP, get_all_wrappers

    return (get_all_wrappers(WrappersMP.APPLY_MODEL, transformer_options)
            + get_all_wrappers(WrappersMP.DIFFUSION_MODEL, transformer_options))
