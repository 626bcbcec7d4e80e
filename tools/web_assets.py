"""Install the widget renderer and require.js into the book's static files.

myst-nb loads both from CDNs by default; the book serves its own copies
instead, so widget snapshots render with no network.  The packages come from
the npm registry (`npm pack`, no dependencies needed: both ship bundles), are
checked against the sha512 integrity pinned in tools/web-assets.json, and are
unpacked into _static/vendor/.  Idempotent: a second run does nothing.

`install(spec=..., vendor=...)` does the same for another pinned list into
another folder: tools/lite.py installs Pyodide (tools/lite-assets.json) that way.
"""
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "tools" / "web-assets.json"
VENDOR = ROOT / "_static" / "vendor"
STAMP = VENDOR / ".installed.json"


def _integrity(path: Path) -> str:
    digest = hashlib.sha512(path.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode()


def _wanted(member: str, src: str, exclude: list[str]) -> bool:
    if src.endswith("/"):
        return member.startswith(src) and not any(member.endswith(s) for s in exclude)
    return member == src


def install(force: bool = False, spec: Path = SPEC, vendor: Path = VENDOR) -> Path:
    """Unpack the npm packages pinned in ``spec`` into ``vendor``; return ``vendor``."""
    stamp = vendor / STAMP.name
    spec_path, spec = spec, json.loads(spec.read_text())
    if not force and stamp.exists() and json.loads(stamp.read_text()) == spec:
        return vendor
    if shutil.which("npm") is None:
        raise SystemExit(f"npm is needed to install the pinned npm packages of "
                         f"{spec_path.name}: apt-get install -y npm")
    shutil.rmtree(vendor, ignore_errors=True)
    vendor.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        for pkg in spec["packages"]:
            ref = f"{pkg['name']}@{pkg['version']}"
            out = subprocess.run(["npm", "pack", ref, "--json", "--pack-destination", tmp],
                                 capture_output=True, text=True, check=True)
            tgz = Path(tmp) / json.loads(out.stdout)[0]["filename"]
            if _integrity(tgz) != pkg["integrity"]:
                raise SystemExit(f"{ref}: integrity mismatch; refusing to install it")
            with tarfile.open(tgz) as tar:
                for member in tar.getmembers():
                    if not member.isfile():
                        continue
                    for src, dst in pkg["files"].items():
                        if _wanted(member.name, src, pkg.get("exclude_suffixes", [])):
                            rel = dst + member.name[len(src):] if src.endswith("/") else dst
                            target = vendor / rel
                            target.parent.mkdir(parents=True, exist_ok=True)
                            target.write_bytes(tar.extractfile(member).read())
    stamp.write_text(json.dumps(spec))
    return vendor


if __name__ == "__main__":
    path = install(force="--force" in sys.argv)
    print(f"web assets in {path.relative_to(ROOT)}")
