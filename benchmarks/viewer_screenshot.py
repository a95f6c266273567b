"""Screenshot of `diff3r view` in headless Chromium (for the README; not part of CI).

Starts the viewer on a free loopback port in this process, opens it in headless Chromium
(software WebGL through SwiftShader) driven over the DevTools protocol, waits for the splats
to arrive and render, and saves a PNG.

    apt-get install -y chromium          # Debian/Ubuntu
    python benchmarks/viewer_screenshot.py --ply out/scene.ply --width 1024 --height 576 --wait 25

Without --ply it reconstructs the bundled sample into out/ first.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise SystemExit("no Chromium found: apt-get install -y chromium")


async def _capture(devtools_port: int, url: str, width: int, height: int, wait_s: float,
                   click_save: bool = False) -> bytes:
    import websockets

    # a fresh tab, driven over the DevTools protocol
    req = urllib.request.Request(f"http://127.0.0.1:{devtools_port}/json/new?about:blank", method="PUT")
    target = json.loads(urllib.request.urlopen(req, timeout=30).read())
    async with websockets.connect(target["webSocketDebuggerUrl"], max_size=None) as ws:
        n = 0

        async def call(method: str, **params) -> dict:
            nonlocal n
            n += 1
            await ws.send(json.dumps({"id": n, "method": method, "params": params}))
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("id") == n:
                    if "error" in msg:
                        raise RuntimeError(f"{method}: {msg['error']}")
                    return msg.get("result", {})

        await call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                   mobile=False)
        await call("Page.enable")
        await call("Page.navigate", url=url)
        await asyncio.sleep(wait_s)  # page load, websocket replay of the scene, WebGL sort + draw
        # close viser's "software WebGL" toast: it is about this headless browser, not the scene
        await call("Runtime.evaluate", expression="document.querySelectorAll('.mantine-Notification-closeButton')"
                                                  ".forEach(b => b.click())")
        await asyncio.sleep(1.0)
        shot = await call("Page.captureScreenshot", format="png")
        if click_save:  # press the viewer's "save view as PNG" button like a user
            await call("Runtime.evaluate", expression="[...document.querySelectorAll('button')]"
                                                      ".find(b => b.textContent.includes('save view as PNG')).click()")
            await asyncio.sleep(wait_s)  # the browser renders the view and sends it back
        return base64.b64decode(shot["data"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ply", type=Path, default=None, help="splat to show (default: reconstruct the sample)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "viewer.png")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--wait", type=float, default=20.0, help="seconds to let the page render")
    ap.add_argument("--click-save", action="store_true",
                    help="also press 'save view as PNG' and check that the viewer wrote <stem>_view_NNN.png")
    ap.add_argument("--colors", type=int, default=256, help="palette size of the saved PNG (0: full colour)")
    args = ap.parse_args()

    ply = args.ply
    if ply is None:
        ply = REPO / "out" / "scene.ply"
        if not ply.exists():
            subprocess.run([sys.executable, "-m", "diff3r_cli", "reconstruct", str(REPO / "sample_data" / "room"),
                            "--out", str(ply), "--no-render"], check=True, cwd=REPO)

    from diff3r_cli.viewer import start_viewer

    server, url = start_viewer(ply, port=_free_port())
    dev_port = _free_port()
    profile = tempfile.mkdtemp(prefix="diff3r-chromium-")
    browser = subprocess.Popen(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--use-gl=angle", "--use-angle=swiftshader",
         "--enable-unsafe-swiftshader", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
         f"--remote-debugging-port={dev_port}", f"--window-size={args.width},{args.height}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.monotonic()
        while True:  # wait for the DevTools endpoint
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{dev_port}/json/version", timeout=2)
                break
            except OSError:
                if time.monotonic() - t0 > 60:
                    raise SystemExit("Chromium did not start")
                time.sleep(0.3)
        before = set(ply.parent.glob(f"{ply.stem}_view_*.png"))
        png = asyncio.run(_capture(dev_port, url, args.width, args.height, args.wait, args.click_save))
        if args.click_save:
            new = sorted(set(ply.parent.glob(f"{ply.stem}_view_*.png")) - before)
            print(f"save button: {'wrote ' + ', '.join(map(str, new)) if new else 'NOTHING WRITTEN'}")
    finally:
        browser.terminate()
        browser.wait(timeout=30)
        server.stop()
        shutil.rmtree(profile, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.colors:
        # a 256-colour palette keeps the committed picture small (~80 KiB instead of ~350)
        import io

        from PIL import Image

        im = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=args.colors, method=Image.Quantize.MEDIANCUT)
        im.save(args.out, optimize=True)
    else:
        args.out.write_bytes(png)
    print(f"saved {args.out} ({args.out.stat().st_size // 1024} KiB) from {url} showing {ply}")


if __name__ == "__main__":
    main()
