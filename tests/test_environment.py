"""environment.yml (for conda users) pins the same versions as requirements.lock (what make installs)."""
import re

import yaml


def pins(lines):
    out = {}
    for line in lines:
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;#]+)", line)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_environment_yml_agrees_with_lock(root):
    lock = pins((root / "requirements.lock").read_text().splitlines())
    lock.update(pins((root / "requirements-nodeps.txt").read_text().splitlines()))
    env = yaml.safe_load((root / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    env_pins = pins(pip_section)
    assert len(env_pins) >= 15
    mismatched = {k: (v, lock.get(k)) for k, v in env_pins.items() if lock.get(k) != v}
    assert not mismatched, f"environment.yml vs requirements.lock: {mismatched}"
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python.startswith("python=3.11")
