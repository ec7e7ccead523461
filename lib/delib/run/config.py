"""The run recipe: one typed schema for every setting of one run, shared by the runner and every notebook.

A params file is a plain papermill parameter file: its top-level keys are the variables of each notebook's
`parameters` cell. `load_params` and `validate_params` refuse unknown keys and wrong types with the file,
the line and the key path.
"""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

EMBEDDED_MODEL = "smollm2-135m-instruct"


class ParamsError(ValueError):
    """A recipe that cannot run: says which file, line and key, and why."""

    def _render_traceback_(self) -> list[str]:
        """In a notebook, IPython shows these lines instead of a traceback: the message is the whole story."""
        return [f"ParamsError: {line}" for line in str(self).splitlines()]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class Sampling(_Strict):
    """Sampling settings of one model role; `seed: null` means the run's seed."""

    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1)
    seed: Optional[int] = None
    n: int = Field(1, ge=1)  # samples per request
    reasoning_effort: Optional[Literal["minimal", "low", "medium", "high"]] = None  # reasoning models only


class ModelRole(_Strict):
    """One model the run talks to: where it is served and how it samples."""

    # embedded: a GGUF, transformers: a Hugging Face folder (both served here); openai_compatible: at base_url
    backend: Literal["embedded", "transformers", "openai", "openai_compatible"] = "embedded"
    model: str = EMBEDDED_MODEL
    base_url: Optional[str] = None  # openai_compatible only, e.g. http://localhost:8000/v1
    api_key_env: Optional[str] = None  # name of the environment variable holding the key (never the key)
    adapter: Optional[str] = None  # LoRA adapter (GGUF) to load into the embedded server
    # What a served model's name stands for (a commit, a checkpoint's hash): the cache never answers a retrained model
    # with the replies of the one served under the same name before (a local file or folder is hashed anyway).
    revision: Optional[str] = None
    max_concurrency: int = Field(4, ge=1)
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(4, ge=0)  # retries of 429, 5xx, timeouts and dropped connections
    parse_retries: int = Field(2, ge=0)  # extra tries for a reply that does not validate as the asked-for JSON
    max_failed_share: float = Field(0.5, ge=0, le=1)  # more failed requests than this in one batch stop the stage
    sampling: Sampling = Sampling()
    # How a pre-started reply ("<think>") is continued. continue: the last assistant message, vLLM's
    # continue_final_message; template: the chat template (chat_template, or a local model) rendered here, sent to
    # /completions; off: asked in one turn (a warning). auto: template for the embedded model, off for OpenAI and
    # transformers, for openai_compatible one probe request (cached) that tells continue from restart.
    prefill: Literal["auto", "continue", "template", "off"] = "auto"
    chat_template: Optional[str] = None  # a GGUF file or Hugging Face folder whose chat template `template` renders
    # How an openai_compatible server takes a grammar (generate.structured): llama_cpp (`grammar`), vllm (0.12+:
    # `structured_outputs`), none; auto: as its model list's owned_by says (asked once, cached), else none.
    grammar: Literal["auto", "llama_cpp", "vllm", "none"] = "auto"

    @property
    def key_env(self) -> Optional[str]:
        """The environment variable that holds this role's API key (None: a local server without one)."""
        return self.api_key_env or ("OPENAI_API_KEY" if self.backend == "openai" else None)

    @model_validator(mode="after")
    def _backend_needs(self) -> "ModelRole":
        if self.backend == "openai_compatible" and not self.base_url:
            raise ValueError("backend 'openai_compatible' needs base_url")
        if self.backend != "openai_compatible" and self.base_url:
            raise ValueError(f"base_url is only used with backend 'openai_compatible', not {self.backend!r}")
        if self.adapter and self.backend != "embedded":
            raise ValueError("adapter is only loaded by the embedded backend")
        if self.grammar != "auto" and self.backend != "openai_compatible":
            raise ValueError(f"grammar {self.grammar!r}: only an openai_compatible server's is set (leave auto)")
        if self.backend == "openai" and self.prefill in ("continue", "template"):
            raise ValueError(f"prefill {self.prefill!r}: OpenAI's API cannot continue a pre-started reply (use auto "
                             "or off: stages then ask for the whole reply in one turn)")
        if self.api_key_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            raise ValueError("api_key_env must be the NAME of an environment variable, not a key")
        return self


class Models(_Strict):
    """The model roles of the method: G_base (generator), G_RM (judge) and the policy trained and evaluated."""

    # the embedded server answers one request at a time: one in flight keeps its prompt cache warm
    generator: ModelRole = ModelRole(max_concurrency=8, sampling=Sampling(temperature=0.7, top_p=0.95))
    judge: ModelRole = ModelRole(max_concurrency=8, sampling=Sampling(temperature=0.0, max_tokens=128))
    policy: ModelRole = ModelRole(max_concurrency=8, sampling=Sampling(temperature=0.0))
    second_judge: Optional[ModelRole] = None  # a second judge, to measure agreement between judges
    grader: Optional[ModelRole] = None  # stage 06's LLM grader (prompt, category spec, answer); null: rules grade


class TemplateParams(_Strict):
    """The prompt template files of the model roles (run/templates.py); null: the default beside the default
    spec (specs/default/templates/NAME.txt)."""

    generator: Optional[str] = None  # the generator's and the spec_prompt variant's system prompt
    judge: Optional[str] = None  # the judge's (stage 03 and the RL reward)
    grader: Optional[str] = None  # the LLM grader's (stage 06, models.grader)
    strongreject: Optional[str] = None  # the StrongREJECT rubric's (stage 06)


class SpecParams(_Strict):
    path: str = "specs/default/spec.md"
    mapping: Optional[str] = None  # YAML category mapping beside the spec; null: the spec's front matter
    templates: TemplateParams = TemplateParams()


class PromptSetParams(_Strict):
    """One prompt set file; `columns` maps our column names to the file's."""

    path: str
    columns: dict[str, str] = {}  # e.g. {prompt: question, category: topic}
    split: Optional[Literal["train", "dev", "test"]] = None  # force every row into one split


class PromptsParams(_Strict):
    sets: list[PromptSetParams] = [PromptSetParams(path=f"prompts/{name}.csv") for name in ("default", "default_test")]
    xstest_path: Optional[str] = None  # XSTest prompts CSV, for the evaluation stage
    strongreject_path: Optional[str] = None  # StrongREJECT-style CSV (forbidden_prompt, ...), for the evaluation stage
    jailbreaks_path: str = "prompts/benchmarks/jailbreaks.yaml"  # techniques each forbidden prompt is asked under
    dev_share: float = Field(0.5, ge=0, le=1)  # rows without a split: the share a seeded split sends to dev
    label_missing: bool = True  # rows without a category, or an action and a level: models.judge labels them


class CacheParams(_Strict):
    enabled: bool = True
    path: str = "outputs/.cache/model_calls.sqlite"  # shared by runs: same request, same answer


class StageParams(_Strict):
    """Settings every stage that reads prompts has."""

    max_prompts: Optional[int] = Field(None, ge=1)  # cap for quick runs; null: all


class CallingStageParams(StageParams):
    """A stage that sends many model calls at once (generation, judging, evaluation)."""

    batch: bool = False  # send this stage's uncached calls through the OpenAI Batch API (openai backends only)


class GenerateParams(CallingStageParams):
    max_prompts: Optional[int] = Field(14, ge=1)  # training prompts, categories in turn; null: all
    samples_per_prompt: int = Field(2, ge=1)
    k_shot: int = Field(1, ge=0)  # worked examples shown before the prompt (helps small generators)
    examples: Optional[str] = "auto"  # YAML of worked examples; auto: examples.yaml beside the spec, if any; null: none
    prestart_think: bool = True  # pre-start the reply with <think>, stop at </think>, then ask for the answer
    cot_max_tokens: int = Field(192, ge=8)  # cap of the pre-started chain of thought
    # The CoT under a grammar of the spec's skeleton (generation.skeleton): on, off, or auto (on where the generator's
    # server decodes one: embedded, a llama.cpp or vLLM server, ModelRole.grammar). Needs prestart_think.
    structured: Literal["auto", "on", "off"] = "auto"
    # Tell the generator each prompt's level (its `level` column): named in the system prompt and, under the skeleton
    # grammar, the only level the CoT may cite: context the generator sees and the trained model never does.
    level_hint: bool = False

    @model_validator(mode="after")
    def _structured_needs_prestart(self) -> "GenerateParams":
        if self.structured == "on" and not self.prestart_think:
            raise ValueError("generate.structured: on needs generate.prestart_think: true (the CoT is its own step)")
        return self


# The weights of the rule checks beside the judge: in stage 03's final score, and in the RL reward (answer only).
SCORE_WEIGHTS = {"judge": 0.5, "action": 0.2, "citation": 0.1, "style": 0.2}
# The RL reward: the judge's overall, action and style scores; the rule parts share stage 06's graders (off).
REWARD_WEIGHTS = {"judge": 0.5, "judge_action": 0.3, "judge_style": 0.2, "rule_action": 0.0, "rule_style": 0.0}


# Weight names that changed meaning: refused with what to write instead.
_RENAMED_WEIGHTS = {"action": "judge_action (the judge's score) or rule_action (stage 06's rules, shared)",
                    "style": "judge_style (the judge's score) or rule_style (stage 06's rules, shared)"}


def _check_weights(v: dict[str, float], known: dict[str, float], what: str) -> dict[str, float]:
    renamed = [f"{k!r} is now {_RENAMED_WEIGHTS[k]}" for k in v if k not in known and k in _RENAMED_WEIGHTS]
    if renamed:
        raise ValueError(f"{what}: " + "; ".join(renamed))
    unknown = set(v) - set(known)
    if unknown:
        raise ValueError(f"unknown {what}(s) {sorted(unknown)}; they are {', '.join(known)}")
    if any(w < 0 for w in v.values()) or sum(v.values()) <= 0:
        raise ValueError("weights must be non-negative with a positive sum")
    return v


# Stage 03's gates from the spec, in the order the funnel applies them (judging.filtering.GATES says what each checks).
GATES = ("cites_level", "applicable_level", "action_of_level", "style_of_action", "answer_takes_action", "expected_action")


class JudgeParams(CallingStageParams):
    k: int = Field(1, ge=1)  # independent judgements per sample; k > 1 needs a temperature > 0 (else all alike)
    temperature: Optional[float] = Field(None, ge=0)  # of stage 03's judgements; null: the judge role's sampling
    gates: list[Literal[GATES]] = list(GATES)  # the spec's gates a sample must pass before the judge sees it
    aggregate: Literal["min", "mean"] = "min"  # how the k judgements combine (the paper keeps the minimum)
    threshold: float = Field(5.0, ge=0, le=10)  # final score a sample needs to enter the SFT set
    show_expected_action: bool = True  # tell the judge the prompt's expected action (the paper allows it)
    top_logprobs: Optional[int] = Field(None, ge=1, le=20)  # for the expected score; null: none (~4x faster on llama.cpp)
    score_weights: dict[str, float] = dict(SCORE_WEIGHTS)  # judge and rule checks in the final score
    best_of_n: bool = True  # keep only the best sample of each prompt
    max_per_category: Optional[int] = Field(None, ge=1)  # cap per category, to balance the SFT set
    independent_selection: bool = False  # select without what stage 06 grades with (filtering.SHARED_GATES, ..)

    @field_validator("score_weights")
    @classmethod
    def _known_weights(cls, v: dict[str, float]) -> dict[str, float]:
        return _check_weights(v, SCORE_WEIGHTS, "score weight")


class SFTParams(StageParams):
    """Stage 04: fine-tune the policy on (prompt, CoT, answer) with the spec removed. Defaults fit 2 CPU cores."""

    backend: Literal["trl", "openai"] = "trl"  # trl: open weights here; openai: OpenAI's fine-tuning API
    base_model: Optional[str] = None  # Hugging Face folder or hub id to train; null: the embedded GGUF, converted
    lora: bool = True  # LoRA adapter (peft); false: full fine-tuning
    lora_r: int = Field(8, ge=1)
    lora_alpha: float = Field(16.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                      "down_proj"]  # or ["all-linear"]
    max_steps: int = Field(6, ge=-1)  # optimizer steps; -1: num_train_epochs over the SFT set
    num_train_epochs: float = Field(1.0, gt=0)
    learning_rate: float = Field(4e-4, gt=0)
    lr_scheduler_type: str = "constant"
    warmup_steps: int = Field(0, ge=0)
    per_device_train_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_length: int = Field(512, ge=16)  # tokens per example (prompt + CoT + answer); longer ones are truncated
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # fp32 on CPU: bf16 matmuls are far slower there
    gradient_checkpointing: bool = False  # less memory, ~30% more time
    num_threads: Optional[int] = None  # torch CPU threads; null: every core this process may use
    num_processes: int = Field(1, ge=1)  # >1: run under `accelerate launch` with this many processes (GPUs)
    deepspeed: Optional[str | dict[str, Any]] = None  # DeepSpeed config: a JSON file, or the config itself
    trl_args: dict[str, Any] = {}  # any other SFTConfig field, passed to TRL as is
    openai_model: str = "gpt-4.1-nano-2025-04-14"  # what an OpenAI supervised job fine-tunes (backend: openai)

    @field_validator("max_steps")
    @classmethod
    def _some_steps(cls, v: int) -> int:
        if v == 0:
            raise ValueError("max_steps 0 trains nothing: give a number of steps, or -1 for num_train_epochs")
        return v


class RLParams(StageParams):
    """Stage 05: GRPO from the SFT checkpoint, rewarded by the spec-aware judge on the final answer only."""

    backend: Literal["trl", "openai"] = "trl"  # trl: GRPO here; openai: an OpenAI reinforcement fine-tuning job
    from_sft: bool = True  # start from the SFT checkpoint; false: from the base weights (the "RL only" ablation)
    max_steps: int = Field(3, ge=1)  # optimizer steps
    learning_rate: float = Field(1e-4, gt=0)
    lr_scheduler_type: str = "constant"
    per_device_train_batch_size: int = Field(4, ge=1)  # completions per step and device
    gradient_accumulation_steps: int = Field(1, ge=1)
    num_generations: int = Field(4, ge=2)  # completions per prompt (GRPO's group)
    max_completion_length: int = Field(128, ge=8)  # tokens per completion (CoT and answer); longer ones are cut
    temperature: float = Field(0.7, gt=0)  # sampling temperature (at 1.0 a 135M model writes noise)
    beta: float = Field(0.04, ge=0)  # KL penalty toward the starting (SFT) model; 0: no KL term, none logged
    reward_weights: dict[str, float] = dict(REWARD_WEIGHTS)  # answer-only partial credit
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    gradient_checkpointing: bool = False
    num_threads: Optional[int] = None  # torch CPU threads; null: every core this process may use
    num_processes: int = Field(1, ge=1)  # >1: run under `accelerate launch` with this many processes (GPUs)
    deepspeed: Optional[str | dict[str, Any]] = None  # DeepSpeed config: a JSON file, or the config itself
    trl_args: dict[str, Any] = {}  # any other GRPOConfig field, passed to TRL as is
    openai_model: str = "o4-mini-2025-04-16"  # what an OpenAI reinforcement job fine-tunes (backend: openai)
    openai_grader_model: str = "gpt-4.1-2025-04-14"  # the score_model grader that holds the spec

    @field_validator("reward_weights")
    @classmethod
    def _known_reward_weights(cls, v: dict[str, float]) -> dict[str, float]:
        """Keys a recipe leaves out keep their defaults, as in judge.score_weights."""
        return {**REWARD_WEIGHTS, **_check_weights(v, REWARD_WEIGHTS, "reward weight")}

    @model_validator(mode="after")
    def _groups_fit(self) -> "RLParams":
        if self.per_device_train_batch_size * self.gradient_accumulation_steps % self.num_generations:
            raise ValueError(f"per_device_train_batch_size x gradient_accumulation_steps "
                             f"({self.per_device_train_batch_size} x {self.gradient_accumulation_steps}) must be "
                             f"a multiple of num_generations ({self.num_generations})")
        return self


VariantName = Literal["base", "base_skeleton", "spec_prompt", "spec_prompt_skeleton", "sft", "sft_rl"]  # lineup.py
VARIANTS: tuple[str, ...] = get_args(VariantName)  # the built-in variants of stage 06, in order


class EvaluateParams(CallingStageParams):
    """Stage 06: which variants answer the held-out prompts, how, and how the metrics are bootstrapped."""

    max_prompts: Optional[int] = Field(28, ge=1)  # held-out prompts, categories in turn; null: all
    split: Literal["dev", "test"] = "dev"  # dev: tuned on; test: locked, for the run whose figures are published
    variants: list[VariantName] = list(VARIANTS)
    # spec_prompt's system prompt: the category's view of the spec (what the generator is shown, ~1,800 tokens) or the
    # whole spec (~6,200: the model is not told the category; on the embedded model ~4x the time per answer)
    spec_prompt: Literal["category", "whole"] = "category"
    extra_models: dict[str, ModelRole] = {}  # more variants by name, e.g. an OpenAI model or a vLLM endpoint
    max_tokens: Optional[int] = Field(128, ge=8)  # per answer (CoT included); null: the role's sampling.max_tokens
    prestart_think: bool = False  # pre-start every reply with <think> (then ask for the answer); false: as is
    cot_max_tokens: int = Field(128, ge=8)  # cap of a pre-started chain of thought
    style_threshold: float = Field(0.8, ge=0, le=1)  # style score (rules.style_score) that counts as adherent
    bootstrap_resamples: int = Field(1000, ge=10)
    confidence: float = Field(0.95, gt=0, lt=1)  # level of every interval
    baseline: str = "base"  # the variant every other one is compared with (paired differences)
    # The primary metrics, declared before the run: their differences between a trained variant and one that is not
    # are one family, Holm-adjusted (p_holm); every other difference is exploratory, Benjamini-Hochberg (q_bh).
    primary: list[str] = ["citation_accuracy", "not_unsafe", "not_overrefuse"]
    benchmark_max_prompts: Optional[int] = Field(50, ge=1)  # cap of XSTest / StrongREJECT prompts, types in turn
    # Human-labelled files the rule graders are checked against in every report (absent: the report says so).
    validity_xstest: Optional[str] = "../shared/data/xstest/dev_completions_mistralinstruct_labelled.csv"
    validity_rbr: Optional[str] = "../shared/data/rbr/rbr_gold_train.jsonl"
    validity_llm_sample: int = Field(40, ge=0)  # held-out XSTest rows the LLM grader (when set) is checked on

    @field_validator("extra_models")
    @classmethod
    def _no_clash(cls, v: dict) -> dict:
        clash = set(v) & set(VARIANTS)
        if clash:
            raise ValueError(f"extra_models names {sorted(clash)} are taken by the built-in variants")
        return v


class AnalysisParams(_Strict):
    """Stage 07: the report, and other runs to compare with this one."""

    compare_runs: list[str] = []  # other run names under outputs_dir (or run folders) to show side by side


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class RunParams(_Strict):
    """Every setting of one run. Top-level keys are the notebooks' parameters."""

    run_name: str
    seed: int = 0
    outputs_dir: str = "outputs"
    models: Models = Models()
    spec: SpecParams = SpecParams()
    prompts: PromptsParams = PromptsParams()
    cache: CacheParams = CacheParams()
    generate: GenerateParams = GenerateParams()
    judge: JudgeParams = JudgeParams()
    sft: SFTParams = SFTParams()
    rl: RLParams = RLParams()
    evaluate: EvaluateParams = EvaluateParams()
    analysis: AnalysisParams = AnalysisParams()

    @field_validator("run_name")
    @classmethod
    def _run_name_is_a_folder_name(cls, v: str) -> str:
        if "/" in v or "\\" in v:
            raise ValueError(f"run_name {v!r} contains a path separator; it names one folder under outputs_dir")
        if not RUN_NAME.fullmatch(v) or v in {".", ".."}:
            raise ValueError(f"run_name {v!r} must be letters, digits, '_', '-' or '.', not starting with '.'")
        return v

    @model_validator(mode="after")
    def _structured_needs_a_grammar(self) -> "RunParams":
        g = self.models.generator
        if self.generate.structured == "on" and (g.backend == "openai" or g.grammar == "none"):
            raise ValueError(f"generate.structured: on needs a generator whose server decodes a grammar, not "
                             f"{g.backend!r}{' with grammar none' if g.grammar == 'none' else ''}: use auto or off")
        return self

    @model_validator(mode="after")
    def _min_of_k_needs_sampling(self) -> "RunParams":
        temperature = self.judge.temperature if self.judge.temperature is not None \
            else self.models.judge.sampling.temperature
        if self.judge.k > 1 and temperature == 0:
            raise ValueError(f"judge.k is {self.judge.k} but the judge samples at temperature 0, so its k judgements "
                             "would all be the same and their minimum no check at all: set judge.k: 1, or "
                             "judge.temperature above 0 (each judgement then has its own seed)")
        return self


PARAM_NAMES = tuple(RunParams.model_fields)


def key_line(root: Optional[yaml.Node], loc: tuple, first_line: int = 1) -> Optional[int]:
    """Line of the deepest key of `loc` that the YAML document has, counting the document's first line as
    `first_line` (a YAML block inside another file, such as a spec's front matter, starts later)."""
    node, line = root, None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(part):
                    node, line = v, k.start_mark.line + 1
                    break
            else:
                break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line + first_line - 1 if line else None


# Keys that were renamed: an old key is refused with the name to use instead (README, "Params reference").
RENAMED = {("judge", "weights"): "judge.score_weights", ("evaluate", "strongreject_path"): "prompts.strongreject_path",
           ("prompts", "eval_share"): "prompts.dev_share"}


def _echoable(value: Any, loc: tuple) -> bool:
    """Whether an error may repeat the value it refused: a scalar only, never `api_key_env` (a key pasted there is
    a secret) and never a whole block (a role's block can hold one)."""
    return (isinstance(value, (str, int, float, bool)) or value is None) and "api_key_env" not in loc


def _describe(err: ValidationError, source: str, root: Optional[yaml.Node]) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc) or "(top level)"
        line = key_line(root, loc)
        where = f"{source}:{line}" if line else source
        reason = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            reason = (f"renamed: use {RENAMED[loc]}" if loc in RENAMED else
                      "unknown key" + (_did_you_mean(str(loc[0]), PARAM_NAMES) if len(loc) == 1 else ""))
        elif e["type"] != "missing" and "input" in e and _echoable(e["input"], loc):
            reason += f" (got {e['input']!r})"
        lines.append(f"{where}: {path}: {reason}")
    return "\n".join(lines)


def validate_params(data: Any, source: str = "<params>", _root: Optional[yaml.Node] = None) -> RunParams:
    """Validate a dict of params; raise ParamsError naming `source`, the line and the key path."""
    if not isinstance(data, dict):
        raise ParamsError(f"{source}: a params file must be a mapping of keys to values, got {type(data).__name__}")
    try:
        return RunParams.model_validate(data)
    except ValidationError as err:
        raise ParamsError(_describe(err, source, _root)) from None


def load_params(path: str | Path) -> RunParams:
    """Read and validate a params YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    text = path.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or str(err)
        raise ParamsError(f"{where}: YAML syntax error: {problem}") from None
    return validate_params(data if data is not None else {}, str(path), root)


NOTEBOOK_PARAMS = ("recipe", "run_name")  # what a stage notebook's parameters cell holds


def from_namespace(namespace: dict) -> RunParams:
    """The params a stage notebook runs with: its parameters cell's `recipe` (a params file, relative to the project
    root or absolute) and `run_name` (None: the recipe's own). A name that papermill injected (`-p KEY ...`, `-f
    FILE`) and that is neither is refused, one line a name, saying what the notebook takes."""
    from delib.run.notebooks import injected_names
    unknown = [n for n in dict.fromkeys(injected_names(namespace.get("In")))
               if n not in NOTEBOOK_PARAMS and not n.startswith("PAPERMILL_")]  # --inject-paths adds PAPERMILL_*
    if unknown:
        hint = ("; a stage notebook takes a recipe, not its keys: papermill NB OUT -p recipe params/default.yaml"
                if set(unknown) & set(PARAM_NAMES) else "")
        raise ParamsError("\n".join(f"notebook parameters: {n}: unknown key" + _did_you_mean(n, NOTEBOOK_PARAMS)
                                     for n in unknown) + hint)
    return recipe_params(namespace.get("recipe"), namespace.get("run_name"))


def recipe_params(recipe: Any, run_name: Optional[str] = None) -> RunParams:
    """A recipe's validated params (its path relative to the project root unless absolute), under another run name
    when `run_name` is given."""
    from delib.run.paths import resolve
    if not isinstance(recipe, (str, Path)) or not str(recipe):
        raise ParamsError(f"notebook parameters: recipe: a params file is needed (e.g. 'params/smoke.yaml'), "
                          f"not {recipe!r}")
    params = load_params(resolve(recipe))
    if run_name is None or run_name == params.run_name:
        return params
    return validate_params({**params.model_dump(mode="json"), "run_name": run_name}, f"{recipe} (run_name)")


def _did_you_mean(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
