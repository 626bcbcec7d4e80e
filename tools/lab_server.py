"""A JupyterLab server on loopback serving a folder, for the browser tests and the benchmark.

The server gets its own config, settings and runtime folders under ``work``
(nothing of the user's is read or written), a random token, every cell
rendered (no windowing, so a widget far down is in the DOM) and no news
toast over the screenshots.
"""
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

_SETTINGS = {
    "notebook-extension/tracker.jupyterlab-settings": '{"windowingMode": "none"}',
    "apputils-extension/notification.jupyterlab-settings": '{"fetchNews": "false"}',
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """``with LabServer(work) as lab:`` serves ``work`` at ``lab.url(path)`` until the block ends."""

    def __init__(self, work: Path, start_timeout: float = 90):
        self.work = Path(work)
        self.port, self.token = _free_port(), secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        self.start_timeout = start_timeout
        self.proc = None

    def url(self, path: str) -> str:
        """The page that opens ``path`` alone: ``reset`` empties the workspace, which
        would otherwise reopen (and start kernels for) every tab opened before."""
        return f"{self.base}/lab/tree/{path}?token={self.token}&reset"

    def __enter__(self) -> "LabServer":
        for name, text in _SETTINGS.items():
            target = self.work / "settings" / "@jupyterlab" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        env = dict(os.environ, JUPYTER_CONFIG_DIR=str(self.work / "config"),
                   JUPYTERLAB_SETTINGS_DIR=str(self.work / "settings"),
                   JUPYTER_RUNTIME_DIR=str(self.work / "runtime"), PYTHONHASHSEED="0")
        jupyter = Path(sys.executable).with_name("jupyter")
        self.log = self.work / "lab.log"
        self.proc = subprocess.Popen(
            [str(jupyter), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
             f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.work}",
             "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=",
             "--ServerApp.open_browser=False", "--allow-root",
             "--LabServerApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.base}/api/status?token={self.token}", timeout=2)
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__(None, None, None)
                    raise RuntimeError("JupyterLab did not start:\n" + self.log.read_text()[-3000:])
                time.sleep(0.5)

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


_PANEL = ("(() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
          " return w && w.context && w.context.path === PATH ? w : null; })()")


def panel_js(path: str) -> str:
    """A JavaScript expression for the notebook panel open at ``path`` (or null)."""
    return _PANEL.replace("PATH", repr(path))


def wait_for_kernel(page, path: str, timeout_ms: int = 90000):
    page.wait_for_function(f"() => {{ const w = {panel_js(path)};"
                           " return !!(w && w.sessionContext?.session?.kernel"
                           "?.connectionStatus === 'connected'); }", timeout=timeout_ms)


def run_all_cells(page, path: str):
    """Run the notebook at ``path`` top to bottom and wait until its kernel is idle."""
    wait_for_kernel(page, path)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    # Done when no cell is queued or running ([*]) and the kernel is idle.
    page.wait_for_function(
        f"() => {{ const w = {panel_js(path)}; if (!w) return false;"
        " const busy = Array.from(w.node.querySelectorAll('.jp-InputPrompt'))"
        "   .some(p => p.textContent.includes('*'));"
        " return !busy && w.sessionContext?.session?.kernel?.status === 'idle'; }",
        timeout=240000, polling=500)


def is_dirty(page, path: str) -> bool:
    return page.evaluate(f"() => {panel_js(path)}.context.model.dirty")


def panel(page, path: str):
    """A Playwright locator for the notebook panel open at ``path``.

    JupyterLab restores the tabs a workspace had open, so a selector that is
    not scoped to this panel may find a hidden copy in another tab.
    """
    page.wait_for_function(f"() => !!{panel_js(path)}", timeout=90000)
    return page.locator("#" + page.evaluate(f"() => {panel_js(path)}.id"))
