"""A real headless Chromium for the browser tests (imported as `browser`: tests/ is on sys.path beside
conftest.py): finding or installing Debian's chromium, one-shot runs (`--dump-dom`, `--screenshot`), and a small
Chrome DevTools Protocol client over `--remote-debugging-pipe` (no extra package: JSON messages ending in NUL on
file descriptors 3 and 4) to press keys and click like a person."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


def chromium() -> str | None:
    """Debian's Chromium; installed here when missing and we may (root, or passwordless sudo).

    None only when it is absent and cannot be installed; an install that fails for another reason fails the test.
    """
    if found := shutil.which("chromium"):
        return found
    if os.geteuid() == 0:
        prefix = []
    elif shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        prefix = ["sudo", "-n"]
    else:
        return None
    for args in (["update", "-qq"], ["install", "-y", "--no-install-recommends", "chromium"]):
        res = subprocess.run([*prefix, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", *args],
                             capture_output=True, text=True, timeout=900)
        if res.returncode:
            pytest.fail(f"apt-get {' '.join(args)} failed: {res.stderr[-1500:]}")
    return shutil.which("chromium")


def headless(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [*FLAGS, f"--user-data-dir={profile}"]
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=180)


def high_fd(fd: int) -> int:
    """A duplicate of fd numbered 10 or above (the original is closed)."""
    import fcntl

    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


class DevTools:
    """One headless Chromium driven over the DevTools protocol on a pipe; one page (a flattened session)."""

    def __init__(self, browser: str, profile: Path, width: int = 1200, height: int = 900):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # the child's ends above fd 9, so the redirections below cannot overwrite one another
        to_chrome_r, from_chrome_w = (high_fd(fd) for fd in (to_chrome_r, from_chrome_w))
        # bash (dash reads one-digit fds only) puts the pipes on fds 3 (commands in) and 4 (replies out), where
        # Chromium expects them
        cmd = " ".join(["exec", "\"$0\"", *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}",
                        f"--window-size={width},{height}", "about:blank",
                        f"3<&{to_chrome_r}", f"4>&{from_chrome_w}"])
        self.proc = subprocess.Popen(["bash", "-c", cmd, browser], pass_fds=(to_chrome_r, from_chrome_w),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._next_id = 0
        self.session: str | None = None
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            if time.monotonic() > deadline:
                raise TimeoutError("no reply from Chromium")
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError(f"Chromium closed the pipe (exit {self.proc.poll()})")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params: dict | None = None, timeout: float = 60.0) -> dict[str, Any]:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session is not None:
            msg["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        raise TimeoutError(f"still false after {timeout} s: {expression}")

    def navigate(self, url: str) -> None:
        self.call("Page.enable")
        self.call("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete'")

    def press(self, key: str, code: str, key_code: int) -> None:
        """A key press as the keyboard sends it (keyDown with its text, then keyUp)."""
        text = key if len(key) == 1 else ""
        self.call("Input.dispatchKeyEvent", {"type": "keyDown", "key": key, "code": code, "text": text,
                                             "windowsVirtualKeyCode": key_code})
        self.call("Input.dispatchKeyEvent", {"type": "keyUp", "key": key, "code": code,
                                             "windowsVirtualKeyCode": key_code})

    def click(self, selector: str) -> None:
        """A left mouse click in the middle of the element (pressed, released), like a person's."""
        box = self.evaluate(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": box[0], "y": box[1], "button": "left",
                                                   "clickCount": 1})

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"]))
        return path

    def close(self) -> None:
        try:
            self.session = None
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        finally:
            for fd in (self._to_chrome, self._from_chrome):
                try:
                    os.close(fd)
                except OSError:
                    pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
