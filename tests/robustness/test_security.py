"""Nothing outside the pack's folders is read or written, whatever a route or a node input is given.

Markers are planted outside the pack's folders (next to them in ComfyUI's output folder, in
ComfyUI's base folder, and in a folder outside the base) and links to them are planted inside
``output/dream_window/`` and ``output/dream_window_cache/``. Path-traversal attempts go to every
route and every name-like node input; no answer may hold a marker, every refusal is a JSON 4xx
(or a node error naming the fix), and no file may appear outside ``output/dream_window*`` and
``input/`` (checked last). Control routes are driven only by a same-origin JSON POST. A
property-based test fuzzes the route parameters. A source scan proves nothing loads pickle.
"""

from __future__ import annotations

import ast
import http.client
import json
import os
import shutil
import tempfile
import time
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.dream_loop import dream_workflow
from tools.harness.comfy_process import REPO

pytestmark = pytest.mark.e2e

S = "sec"
MARKER = b"DW-SECRET-MARKER-5c1e"
TRAVERSALS = ["..", "../outside", "../../etc/passwd", "/etc/passwd", "%2e%2e%2fsecret", "..%2F..%2Fsecret",
              "%2e%2e", "a\x00b", "C:\\Windows\\win.ini", "C:/Windows", "..\\..\\secret", "sec/../../secret",
              "sec/frames/../../../secret", "~root", " sec", "sec\n", "\u2025"]
LINKS = ["linked_session", "linked_state"]
"""Valid names of planted links (made by the ``world`` fixture)."""
GET_ROUTES = ("status", "frame", "stream", "cache", "view")
CONTROL_ACTIONS = ("start", "pause", "resume", "stop", "reset", "delete", "export")
PACK_DIRS = ("output/dream_window", "output/dream_window_cache", "input", "user")
"""Where files may appear under ComfyUI's base folder (``user/``: ComfyUI's own settings)."""


def sec_workflow(name: str = S) -> dict:
    """One iteration of the bundled workflow; playback starts on the first frame (the frame route serves it)."""
    wf = dream_workflow(name, autoqueue=False)
    wf["4"]["inputs"]["min_buffer_seconds"] = 0.0
    return wf


def files_under(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (links not followed): relative path -> (size, mtime_ns)."""
    found = {}
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            if not path.is_symlink():
                stat = path.stat()
                found[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def world(comfy):
    """Session ``sec`` (one keyframe, its frame played), markers outside, links planted inside."""
    base = comfy.base
    outside = Path(tempfile.mkdtemp(prefix="dw-outside-"))
    (outside / "frame_00000001.png").write_bytes(MARKER)
    (outside / "state.json").write_text(json.dumps({"iteration": 7, "error": {"message": MARKER.decode()},
                                                    "prompt": {"secret": MARKER.decode()}}))
    (outside / "secret.txt").write_bytes(MARKER)
    markers = [base / "secret", base / "output" / "secret", base / "output" / "frames" / "frame_00000001.png",
               base / "output" / "dream_window" / "status.json"]
    made = [path.parent for path in markers if not path.parent.exists()]
    for path in markers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(MARKER)
    comfy.queue(sec_workflow())
    comfy.wait_for(lambda: comfy.request("GET", f"/dream_window/frame/{S}")[0] == 200, timeout=120,
                   what="the first frame of the security session to play")
    sessions, caches = base / "output" / "dream_window", base / "output" / "dream_window_cache"
    (sessions / "linked_session").symlink_to(outside, target_is_directory=True)
    (caches / "linked_cache").symlink_to(outside, target_is_directory=True)
    (sessions / "linked_state").mkdir()
    (sessions / "linked_state" / "state.json").symlink_to(outside / "state.json")
    before = {"base": files_under(base), "outside": files_under(outside)}
    yield {"base": base, "outside": outside, "before": before}
    for link in (sessions / "linked_session", caches / "linked_cache"):
        link.unlink()
    shutil.rmtree(sessions / "linked_state")
    shutil.rmtree(outside)
    for path in markers:
        path.unlink()
    for folder in made:
        if not any(folder.iterdir()):  # output/dream_window holds the sessions by now
            folder.rmdir()


def state_bytes(world) -> bytes:
    return (world["base"] / "output" / "dream_window" / S / "state.json").read_bytes()


def assert_json_refusal(status: int, body: bytes, what) -> str:
    assert 400 <= status < 500, (what, status, body[:300])
    assert MARKER not in body, what
    error = json.loads(body)["error"]
    assert "Traceback" not in error, what
    return error


def encoded(text: str) -> str:
    """Every byte percent-encoded, dots included: the server decodes it into exactly ``text``."""
    return "".join(f"%{byte:02X}" for byte in text.encode())


def test_route_path_segments_are_names_never_paths(comfy, world):
    for attack in TRAVERSALS + LINKS:
        for route in GET_ROUTES:
            for prefix in ("", "/api"):
                path = f"{prefix}/dream_window/{route}/{encoded(attack)}?limit=1"
                status, body, _ = comfy.request("GET", path)
                error = assert_json_refusal(status, body, path)
                assert status in (400, 409) and any(words in error for words in (
                    "invalid session name", "is a link")), (path, error)
                raw = f"{prefix}/dream_window/{route}/{urllib.parse.quote(attack, safe='/%:~')}?limit=1"
                status, body, headers = comfy.request("GET", raw)
                assert 400 <= status < 500 and MARKER not in body, (raw, status, body[:300])


def test_control_bodies_query_values_and_export_ranges_never_reach_a_file(comfy, world):
    before = state_bytes(world)
    for attack in TRAVERSALS + LINKS:
        for action in CONTROL_ACTIONS:
            status, data = comfy.post_json(f"/dream_window/{action}", {"session": attack})
            assert_json_refusal(status, json.dumps(data).encode(), (action, attack))
        for key in ("first", "last", "format", "fps"):
            status, data = comfy.post_json("/dream_window/export", {"session": S, key: attack})
            assert status == 400 and key in data["error"], (key, attack, data)
        query = urllib.parse.quote(attack, safe="")
        for path in (f"/dream_window/frame/{S}?index={query}", f"/dream_window/stream/{S}?limit={query}",
                     f"/dream_window/stream/{S}?format={query}"):
            assert_json_refusal(*comfy.request("GET", path)[:2], path)
    for asset in ("../__init__.py", "../../core/loop/session.py", "/etc/passwd", "index.html", "viewer.mjs\x00.py"):
        status, body, _ = comfy.request("GET", f"/dream_window/assets/{encoded(asset)}")
        assert status == 404 and b"import" not in body and MARKER not in body, asset
    assert state_bytes(world) == before


def test_planted_links_are_refused_not_followed(comfy, world):
    base, outside = world["base"], world["outside"]
    listed = {entry["session"]: entry for entry in comfy.get("/dream_window/sessions")["sessions"]}
    assert MARKER not in json.dumps(listed).encode()
    for name in ("linked_session", "linked_state"):
        assert listed[name]["state"] == "broken" and "link" in listed[name]["last_error"]["message"], listed[name]
        assert listed[name]["disk_bytes"] == 0, "nothing outside is measured either"
        status, body, _ = comfy.request("GET", f"/dream_window/status/{name}")
        assert_json_refusal(status, body, name)
    status, data = comfy.post_json("/dream_window/start", {"session": "linked_session"})
    assert status == 409 and "is a link or leaves" in data["error"] and "remove it" in data["error"]

    # A frames folder swapped for a link: nothing is served, exported or written through it.
    frames = base / "output" / "dream_window" / S / "frames"
    aside = frames.with_name("frames_aside")
    frames.rename(aside)
    frames.symlink_to(outside, target_is_directory=True)
    try:
        for method, path, payload in (("GET", f"/dream_window/frame/{S}?index=1", None),
                                      ("POST", "/dream_window/export", json.dumps({"session": S}).encode())):
            status, body, _ = comfy.request(method, path, payload, {"Content-Type": "application/json"})
            error = assert_json_refusal(status, body, path)
            assert status == 409 and "is a link; remove it" in error
        started = time.time()
        comfy.queue(sec_workflow())
        error = comfy.wait_for(lambda: (e := comfy.session(S)["last_error"]) and e["at"] >= started and e,
                               timeout=60, what="the commit to refuse the link")
        assert "DreamWindowCommit" in error["message"] and "is a link" in error["message"]
    finally:
        frames.unlink()
        aside.rename(frames)

    # Node inputs naming a planted link.
    for node_input, value, words in (("session", "linked_session", "is a link or leaves"),
                                     ("cache", "linked_cache", "is a link or leaves")):
        wf = sec_workflow(value if node_input == "session" else S)
        if node_input == "cache":
            wf["3"]["inputs"]["cache_name"] = value
        started = time.time()
        comfy.queue(wf)
        if node_input == "session":
            prompt_error = comfy.wait_for(lambda: history_error(comfy, started), timeout=60, what="the node error")
        else:
            prompt_error = comfy.wait_for(lambda: (e := comfy.session(S)["last_error"]) and e["at"] >= started
                                          and e["message"], timeout=60, what="the cache node error")
        assert words in prompt_error and "remove it" in prompt_error and MARKER.decode() not in prompt_error
    assert files_under(outside) == world["before"]["outside"], "nothing was written through a link"


def history_error(comfy, since: float) -> str | None:
    """The exception message of the newest failed prompt that started after ``since`` (seconds)."""
    for entry in comfy.get("/history?max_items=5").values():
        for event, data in entry["status"]["messages"]:
            if event == "execution_error" and data["timestamp"] / 1000 >= since:
                return data["exception_message"]
    return None


@pytest.mark.parametrize("node_input", ["session name", "cache name", "seed_folder", "open_clip_weights"])
def test_name_inputs_of_nodes_refuse_traversal(comfy, world, node_input):
    for attack in TRAVERSALS + [str(world["outside"] / "secret.txt"), "../../" + world["outside"].name]:
        wf = sec_workflow()
        if node_input == "session name":
            wf["4"]["inputs"]["name"] = attack
            wf["10"]["inputs"]["enabled"] = False
        elif node_input == "cache name":
            wf["3"]["inputs"]["cache_name"] = attack
        elif node_input == "seed_folder":
            wf["5"]["inputs"]["seed_folder"] = attack
        else:
            wf["3"]["inputs"].update(strategy="open_clip", open_clip_weights=attack)
        started = time.time()
        status, data = comfy.post_json("/prompt", {"prompt": wf, "client_id": comfy.client_id})
        if status == 400:
            text = json.dumps(data["node_errors"])
            if node_input == "open_clip_weights":  # a choice of the files in models/clip_vision
                assert "value_not_in_list" in text and "open_clip_weights" in text, (attack, text[:500])
            else:
                assert "invalid" in text and "letters, digits" in text, (attack, text[:500])
        else:
            # Checked when the node runs (a queue-time check would list its message once per checked input).
            assert status == 200 and node_input in ("seed_folder", "cache name"), (attack, data)
            error = comfy.wait_for(lambda: (e := comfy.session(S)["last_error"]) and e["at"] >= started and e,
                                   timeout=60, what=f"{node_input} {attack!r} to be refused")
            text = error["message"]
            assert any(words in text for words in (
                "leaves ComfyUI's input folder", "does not exist", "not a usable folder name", "letters, digits")), (
                attack, text)
        assert MARKER.decode() not in text


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_control_routes_take_only_a_same_origin_json_post(comfy, world, prefix):
    before = state_bytes(world)
    lan = {"Host": f"192.168.7.20:{comfy.port}"}  # ComfyUI's own origin check only guards loopback hosts
    evil = {"Origin": "http://evil.example"}
    forms = [("GET", None, {**evil}), ("GET", None, {**evil, **lan}), ("GET", None, {}),
             ("POST", f'{{"session": "{S}"}}'.encode(), {**evil, "Content-Type": "text/plain"}),
             ("POST", f'{{"session": "{S}"}}'.encode(), {**evil, **lan, "Content-Type": "text/plain"}),
             ("POST", f"session={S}".encode(), {**lan, "Content-Type": "application/x-www-form-urlencoded"}),
             ("POST", f'--b\r\nContent-Disposition: form-data; name="session"\r\n\r\n{S}\r\n--b--\r\n'.encode(),
              {**lan, "Content-Type": "multipart/form-data; boundary=b"}),
             ("POST", f'{{"session": "{S}"}}'.encode(), {**lan})]
    for action in CONTROL_ACTIONS:
        for method, payload, headers in forms:
            status, body, _ = comfy.request(method, f"{prefix}/dream_window/{action}", payload, headers)
            assert status in (403, 405, 415), (action, method, headers, status, body[:200])
    assert state_bytes(world) == before, "no cross-site request changed the session"
    assert not any(comfy.get("/queue").values()), "no cross-site request queued the loop"
    assert comfy.session(S)["state"] == "idle"


UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "shelve", "marshal", "joblib", "cloudpickle"}


def unsafe_constructs(files: list[Path]) -> list[str]:
    """Where ``files`` import a pickle-like module, name anything pickle, call eval/exec/compile/__import__,
    ``torch.load`` without ``weights_only=True`` or ``numpy.load`` with ``allow_pickle``."""
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.parent.name}/{path.name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Import):
                found += [f"{where} import {alias.name}" for alias in node.names
                          if alias.name.split(".")[0] in UNSAFE_MODULES]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
                found.append(f"{where} from {node.module} import")
            elif isinstance(node, (ast.Name, ast.Attribute)) and "pickle" in (
                    node.id if isinstance(node, ast.Name) else node.attr).lower():
                found.append(f"{where} pickle")
            elif isinstance(node, ast.Call):
                func = node.func
                owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else None
                keywords = {k.arg: k.value for k in node.keywords}
                if isinstance(func, ast.Name) and func.id in ("eval", "exec", "compile", "__import__"):
                    found.append(f"{where} {func.id}()")
                elif owner == "torch" and func.attr == "load":
                    value = keywords.get("weights_only")
                    if not (isinstance(value, ast.Constant) and value.value is True):
                        found.append(f"{where} torch.load without weights_only=True")
                elif owner in ("np", "numpy") and func.attr == "load":
                    value = keywords.get("allow_pickle")
                    if value is not None and not (isinstance(value, ast.Constant) and value.value is False):
                        found.append(f"{where} numpy.load with allow_pickle")
    return found


def test_no_pickle_no_eval_in_the_pack():
    """Only safetensors and JSON are loaded; nothing evaluates code."""
    files = sorted((REPO / "core").rglob("*.py")) + sorted((REPO / "nodes").rglob("*.py"))
    assert len(files) > 20
    assert unsafe_constructs(files) == []


def test_the_scan_finds_what_it_looks_for(tmp_path):
    """The scanner itself: each forbidden construct is reported, the allowed ones are not."""
    evil, fine = tmp_path / "evil.py", tmp_path / "fine.py"
    evil.write_text("import pickle\nimport torch\nx = torch.load('w.pt')\ny = eval('1')\n"
                    "from marshal import loads\nimport numpy as np\nnp.load('a', allow_pickle=True)\n"
                    "torch.load('w.pt', weights_only=False)\n")
    fine.write_text("import json\nimport torch\nimport numpy as np\ntorch.load('w', weights_only=True)\n"
                    "model.eval()\nnp.load('a')\nre.compile('x')\n")
    expected = [(1, "import pickle"), (3, "torch.load without weights_only=True"), (4, "eval()"),
                (5, "from marshal import"), (7, "numpy.load with allow_pickle"),
                (8, "torch.load without weights_only=True")]
    assert sorted(unsafe_constructs([evil])) == sorted(f"{tmp_path.name}/evil.py:{line} {what}"
                                                       for line, what in expected)
    assert unsafe_constructs([fine]) == []


# -- property-based: any route parameter gives a 2xx (a valid request) or a 4xx JSON error, never a 5xx --

SEGMENTS = st.one_of(st.sampled_from([S, S, "never_made"] + LINKS + TRAVERSALS),
                     st.text(min_size=1, max_size=70))
QUERY_VALUES = st.one_of(st.sampled_from(["1", "2", "0", "-1", "1e3", "999999999999", "1000000000001", "jpeg", "png",
                                          "gif", "", "NaN"]), st.text(max_size=30))
QUERIES = st.dictionaries(st.sampled_from(["index", "limit", "format", "junk"]), QUERY_VALUES, max_size=3)


def _whole(value: str, low: int, high: int) -> bool:
    return value.isascii() and value.isdigit() and len(value) <= 13 and low <= int(value) <= high


def get_expected_ok(route: str, segment: str, query: dict) -> bool:
    """Whether a GET is a valid request that must succeed (the security session's one frame is index 1)."""
    if segment != S:
        return False
    if route == "frame":
        return "index" not in query or (_whole(query["index"], 1, 10**12) and int(query["index"]) == 1)
    if route == "stream":
        return (("limit" not in query or _whole(query["limit"], 1, 1_000_000))
                and query.get("format", "jpeg") in ("jpeg", "png"))
    return True


def get(comfy, path: str) -> tuple[int, bytes, str]:
    """Status, body (not read for a stream) and content type; streams are closed after their headers."""
    conn = http.client.HTTPConnection("127.0.0.1", comfy.port, timeout=30)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        streaming = resp.getheader("Content-Type", "").startswith("multipart/")
        return resp.status, b"" if streaming else resp.read(), resp.getheader("Content-Type", "")
    finally:
        conn.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(GET_ROUTES), segment=st.one_of(st.just(S), SEGMENTS), query=QUERIES, api=st.booleans())
def test_fuzzed_get_routes_answer_2xx_or_a_4xx_json_error(comfy, world, route, segment, query, api):
    path = f"{'/api' if api else ''}/dream_window/{route}/{encoded(segment)}"
    if query:
        path += "?" + urllib.parse.urlencode(query)
    status, body, kind = get(comfy, path)
    assert status < 500 and b"Traceback" not in body and MARKER not in body, (path, status, body[:300])
    if get_expected_ok(route, segment, query):
        assert 200 <= status < 300, (path, status, body[:300])
    elif "{" in segment or "}" in segment:
        assert status == 404, path  # aiohttp's router never matches a braced segment: no handler is reached
    else:
        assert 400 <= status < 500 and kind.startswith("application/json") and json.loads(body)["error"], (path, body)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                      max_size=3), max_leaves=6)
EXPORT_FIELDS = {"first": st.one_of(st.integers(-2, 3), JSON_VALUES),
                 "last": st.one_of(st.integers(-2, 3), JSON_VALUES),
                 "fps": st.one_of(st.floats(-1, 200), JSON_VALUES),
                 "format": st.sampled_from(["webp", "mp4", "gif", ""]),
                 "client_id": JSON_VALUES}
BODIES = st.one_of(
    st.fixed_dictionaries({"session": st.one_of(st.just(S), SEGMENTS, JSON_VALUES)},
                          optional={key: value for key, value in EXPORT_FIELDS.items()}),
    JSON_VALUES,
    st.binary(max_size=60))


def post_expected_ok(action: str, body) -> bool:
    """Whether a control POST for the security session is valid (only pause, stop and export are sent for it).
    A pause is refused (409): the session ran once with its autoqueue off, so nothing runs that could pause."""
    if not isinstance(body, dict) or body.get("session") != S or action == "pause":
        return False
    if action != "export":
        return True
    first, last, fps = body.get("first"), body.get("last"), body.get("fps", 3.5)
    for index in (first, last):
        if index is not None and (isinstance(index, bool) or not isinstance(index, int) or not 1 <= index <= 10**12):
            return False
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 120:
        return False
    return body.get("format", "webp") in ("webp", "mp4") and (first or 1) <= 1 <= (last or 1)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(action=st.sampled_from(CONTROL_ACTIONS), body=BODIES, api=st.booleans())
def test_fuzzed_control_bodies_answer_2xx_or_a_4xx_json_error(comfy, world, action, body, api):
    if isinstance(body, dict) and body.get("session") == S and action not in ("pause", "stop", "export"):
        action = "stop"  # start, reset and delete of the security session would change what the other tests check
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, answer, headers = comfy.request("POST", f"{'/api' if api else ''}/dream_window/{action}", raw,
                                            {"Content-Type": "application/json"})
    assert status < 500 and b"Traceback" not in answer and MARKER not in answer, (action, body, status, answer[:300])
    if post_expected_ok(action, body):
        assert 200 <= status < 300, (action, body, status, answer[:300])
    else:
        assert 400 <= status < 500 and json.loads(answer)["error"], (action, body, status, answer[:300])
        assert headers["Content-Type"].startswith("application/json")


def test_nothing_was_written_outside_the_pack_folders(comfy, world):
    after = files_under(world["base"])
    new = [path for path in set(after) - set(world["before"]["base"])
           if not path.startswith(PACK_DIRS) and path != "comfy.log"]
    changed = [path for path, seen in world["before"]["base"].items()
               if path in after and after[path] != seen and not path.startswith(PACK_DIRS) and path != "comfy.log"]
    assert new == [] and changed == [], (new, changed)
    assert files_under(world["outside"]) == world["before"]["outside"]
    for path in (world["base"] / "secret", world["base"] / "output" / "secret"):
        assert path.read_bytes() == MARKER
