"""Open an HTML report in headless Chromium and report what a reader would hit: elements wider than the page,
images that did not load, and whether the answers view filters."""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Optional

CHECK = """<script>window.addEventListener('load',function(){var r={};
document.querySelectorAll('details').forEach(function(d){d.open=true;});
var W=document.documentElement.clientWidth;r.page=W;r.scroll=document.documentElement.scrollWidth;
r.wide=[];document.querySelectorAll('body *').forEach(function(e){
if(e.parentElement&&e.parentElement.closest('.tbl'))return;var b=e.getBoundingClientRect();
if(b.width>0&&b.right>W+1)r.wide.push(e.tagName+(e.className?'.'+e.className:'')+' '+Math.round(b.right));});
r.images=[].map.call(document.images,function(i){return i.complete&&i.naturalWidth>0;});
var a=document.getElementById('answers');if(a){var s=a.querySelector('[name=variant]'),x=a.querySelector('[name=expected]');
r.prompts=a.querySelectorAll('details.prompt').length;
s.value=s.options[1].value;s.dispatchEvent(new Event('change'));r.variant=s.value;
r.variants_shown=[].filter.call(a.querySelectorAll('.v'),function(b){return b.style.display!=='none';})
.map(function(b){return b.dataset.variant;});
x.value=x.options[1].value;x.dispatchEvent(new Event('change'));r.expected=x.value;
r.expected_shown=[].filter.call(a.querySelectorAll('details.prompt'),function(p){return p.style.display!=='none';})
.map(function(p){return p.dataset.expected;});r.count=a.querySelector('.count').textContent;}
var p=document.createElement('pre');p.id='browser-check';p.textContent=JSON.stringify(r);document.body.appendChild(p);});
</script>"""


def chromium() -> Optional[str]:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def cannot_render(binary: Optional[str] = None) -> Optional[str]:
    """Why this machine's Chromium cannot load a trivial page headless (None when it can): an installed browser
    that cannot run here (no sandbox support, missing libraries) is a machine's problem, not the report's."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.html"
        probe.write_text("<html><body><p id='x'>ok</p></body></html>", encoding="utf-8")
        try:
            out = subprocess.run([binary or chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                                  probe.as_uri()], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as err:
            return f"Chromium did not run: {err}"
        return None if "<p id=\"x\">ok</p>" in out.stdout else f"Chromium rendered nothing: {out.stderr[-500:]}"


def check(page: Path, width: int = 1280, binary: Optional[str] = None) -> dict:
    """Load a copy of `page` with the check script in headless Chromium at `width` px; the check's findings."""
    copy = page.with_name(page.stem + ".check.html")
    copy.write_text(page.read_text(encoding="utf-8").replace("</body>", CHECK + "</body>"), encoding="utf-8")
    out = subprocess.run([binary or chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          f"--window-size={width},900", "--virtual-time-budget=10000", "--dump-dom",
                          copy.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="browser-check">(.*?)</pre>', out.stdout, re.S)
    if not m:
        raise RuntimeError(f"Chromium gave no check result (exit {out.returncode}): {out.stderr[-2000:]}")
    return json.loads(html.unescape(m.group(1)))
