"""Checks before the first stage of `delib run`: every model role the selected stages will call answers, knows
its model and takes its key, and the machine has what the recipe asks for (GPUs, DeepSpeed). One line per
problem; `delib run --no-preflight` skips them (an offline dry run, a server that starts later).
"""
from __future__ import annotations

import importlib.util
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, Optional, Sequence

from delib.run import stages as st
from delib.run.config import ModelRole, RunParams
from delib.run.io import env_value
from delib.run.paths import project_root
from delib.run.providers import provider_for

TIMEOUT_S = 10.0


def roles_called(params: RunParams, stages: Sequence[str]) -> Iterator[tuple[str, ModelRole]]:
    """(params key, role) of every model role the stages call (the registry says which), each once."""
    from delib.run.registry import get
    seen = set()
    for stage in stages:
        for name in get(stage).roles(params):
            role = getattr(params.models, name)
            if role is not None and name not in seen:
                seen.add(name)
                yield f"models.{name}", role
    if st.EVALUATE in stages:
        for name, role in params.evaluate.extra_models.items():
            yield f"evaluate.extra_models.{name}", role


def _get(url: str, key: Optional[str]) -> tuple[Optional[int], Optional[dict], str]:
    """(status, JSON body, problem) of a GET; status None when nothing answered."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as r:
            try:
                return r.status, json.load(r), ""
            except ValueError:
                return r.status, None, "the answer is not JSON"
    except urllib.error.HTTPError as err:
        return err.code, None, f"HTTP {err.code}"
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return None, None, str(getattr(reason, "strerror", None) or reason)


def check_role(where: str, role: ModelRole, env_file: Path) -> list[str]:
    """What stops `role` from answering: no weights for a server this process starts; no server, an unknown model, a
    missing or refused key."""
    provider = provider_for(role)
    if provider.local_server:
        problem = provider.weights_problem()
        return [f"{where}: {problem}"] if problem else []
    var = role.key_env
    key = env_value(var, env_file) if var else None
    if var and not key:
        return [f"{where}: no API key: set the environment variable {var} (or put `{var}=...` in {env_file})"]
    base = provider.api_base
    status, body, problem = _get(f"{base}/models", key)
    if status is None:
        return [f"{where}: no server answers at {base} ({problem}); start it (e.g. `vllm serve {role.model}`), "
                "or pass --no-preflight"]
    if status in (401, 403):
        fix = f"check {var}" if var else f"set {where}.api_key_env to the variable that holds the key"
        return [f"{where}: {base} refused the API key (HTTP {status}): {fix}"]
    if status != 200 or not isinstance(body, dict):
        return [f"{where}: {base}/models did not list the models ({problem or f'HTTP {status}'})"]
    served = [m.get("id") for m in body.get("data") or [] if isinstance(m, dict)]
    problem = provider.unserved_problem(served)
    return [f"{where}: {problem}"] if problem else []


def cuda_devices() -> int:
    """GPUs torch can use here (0 without CUDA, or without torch)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_machine(params: RunParams, stages: Sequence[str]) -> list[str]:
    """What a training stage asks of the machine that it lacks: GPUs for several processes, DeepSpeed."""
    problems = []
    for section, stage in st.TRAINING.items():
        p = getattr(params, section)
        if stage not in stages:
            continue
        if p.backend == "openai":  # the key openai_ft submits with: the policy's variable, else OPENAI_API_KEY
            var = params.models.policy.api_key_env or "OPENAI_API_KEY"
            if not env_value(var, project_root() / ".env"):
                problems.append(f"{section}.backend: openai fine-tuning needs the environment variable {var}")
            continue
        if p.num_processes > 1 and (gpus := cuda_devices()) < p.num_processes:
            problems.append(f"{section}.num_processes: {p.num_processes} processes need as many GPUs; torch sees "
                            f"{gpus} here")
        if p.deepspeed and importlib.util.find_spec("deepspeed") is None:
            problems.append(f"{section}.deepspeed: configured, but the deepspeed package is not installed "
                            "(pip install deepspeed)")
    return problems


def preflight(params: RunParams, stages: Sequence[str], env_file: Optional[Path] = None) -> list[str]:
    """Every problem found, one line each ([] when the run can start)."""
    env_file = env_file or project_root() / ".env"
    checked: dict[tuple, list[str]] = {}
    problems = []
    for where, role in roles_called(params, stages):
        same = (role.backend, role.base_url, role.model, role.api_key_env)
        if same not in checked:  # one request for roles that share a server and model
            checked[same] = check_role(where, role, env_file)
            problems += checked[same]
    return problems + check_machine(params, stages)
