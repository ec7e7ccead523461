from pathlib import Path

import pytest

from delib.run.config import ParamsError, from_namespace, load_params, validate_params


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("name", ["default", "smoke", "cpu_hour"])
def test_shipped_recipes_validate(root, name):
    params = load_params(root / "params" / f"{name}.yaml")
    assert params.run_name == name
    assert params.models.generator.backend == "embedded"


@pytest.mark.parametrize("name", ["campus", "class", "gpu_example"])
def test_every_other_shipped_recipe_validates(root, name):
    assert load_params(root / "params" / f"{name}.yaml").run_name == name


def test_the_shipped_sweep_file_makes_valid_runs(root, monkeypatch):
    from delib.run.sweep import load_sweep

    monkeypatch.setenv("DELIB_ROOT", str(root))
    sweep = load_sweep(root / "params" / "ablations.yaml")
    assert len(sweep.runs) == 6 and {r.params.rl.from_sft for r in sweep.runs} == {True, False}
    seeds = load_sweep(root / "params" / "cpu_hour_seeds.yaml")
    assert [r.params.seed for r in seeds.runs] == [0, 1, 2] and {r.params.evaluate.split for r in seeds.runs} == {"dev"}


def test_unknown_key_names_file_line_and_path(tmp_path):
    p = write(tmp_path, "run_name: x\njudge:\n  k: 2\n  treshold: 5\n")
    with pytest.raises(ParamsError) as e:
        load_params(p)
    assert str(e.value) == f"{p}:4: judge.treshold: unknown key"


def test_wrong_type_names_file_line_and_path(tmp_path):
    p = write(tmp_path, "run_name: x\nmodels:\n  judge:\n    sampling:\n      temperature: hot\n")
    with pytest.raises(ParamsError) as e:
        load_params(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:5: models.judge.sampling.temperature:")
    assert "'hot'" in msg


def test_yaml_syntax_error_gives_line(tmp_path):
    p = write(tmp_path, "run_name: x\nseed: [1, 2\njudge: {}\n")
    with pytest.raises(ParamsError) as e:
        load_params(p)
    assert str(e.value).startswith(f"{p}:3: YAML syntax error")


def test_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


@pytest.mark.parametrize("bad", ["a/b", "..", "a\\b", ".hidden"])
def test_run_name_must_be_one_folder(bad):
    with pytest.raises(ParamsError, match="run_name"):
        validate_params({"run_name": bad})


def test_backend_rules():
    with pytest.raises(ParamsError, match="needs base_url"):
        validate_params({"run_name": "x", "models": {"judge": {"backend": "openai_compatible"}}})
    with pytest.raises(ParamsError, match="NAME of an environment variable"):
        validate_params({"run_name": "x", "models": {"judge": {"backend": "openai", "api_key_env": "sk-abc 123"}}})
    ok = validate_params({"run_name": "x", "models": {"judge": {"backend": "openai_compatible",
                                                                 "base_url": "http://127.0.0.1:8000/v1"}}})
    assert ok.models.judge.base_url.endswith("/v1")


def test_from_namespace_reads_the_recipe_it_names_and_validates_it(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("run_name: x\nseed: 3\n")
    params = from_namespace({"recipe": str(recipe), "run_name": None, "In": [], "_oh": {}, "get_ipython": print})
    assert params.seed == 3 and params.run_name == "x"
    assert from_namespace({"recipe": str(recipe), "run_name": "other", "In": []}).run_name == "other"
    recipe.write_text("run_name: x\nseed: three\n")
    with pytest.raises(ParamsError, match=r"r.yaml:2: seed"):
        from_namespace({"recipe": str(recipe), "In": []})


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def test_schema_defaults_are_the_default_recipe(root):
    """One source of defaults: a key left out of any recipe takes the value params/default.yaml gives it."""
    recipe = _leaves(load_params(root / "params" / "default.yaml").model_dump(mode="json"))
    schema = _leaves(validate_params({"run_name": "default"}).model_dump(mode="json"))
    assert {k for k in recipe if recipe[k] != schema.get(k)} == set()
    assert recipe.keys() == schema.keys()


@pytest.mark.parametrize("old, new", [("judge:\n  weights: {judge: 1.0}\n", "judge.score_weights"),
                                      ("evaluate:\n  strongreject_path: x.csv\n", "prompts.strongreject_path")])
def test_a_renamed_key_names_its_new_name(tmp_path, old, new):
    p = write(tmp_path, "run_name: x\n" + old)
    with pytest.raises(ParamsError) as e:
        load_params(p)
    assert str(e.value).startswith(f"{p}:3: ") and str(e.value).endswith(f"renamed: use {new}")


def test_a_key_pasted_into_api_key_env_is_refused_without_being_echoed(tmp_path):
    secret = "sk-proj-0123456789abcdefSECRET"
    p = write(tmp_path, f"run_name: x\nmodels:\n  judge:\n    backend: openai\n    api_key_env: {secret}\n")
    with pytest.raises(ParamsError) as e:
        load_params(p)
    assert "api_key_env must be the NAME" in str(e.value) and secret not in str(e.value)


def test_names_papermill_injected_that_are_not_parameters_are_refused_one_line_each(root):
    history = ["", "# Parameters\nrun_name = 'x'\nrecipy = 'p.yaml'\nbogus_key = 1\n", "params = ..."]
    with pytest.raises(ParamsError) as e:
        from_namespace({"run_name": "x", "recipy": "p.yaml", "bogus_key": 1, "In": history})
    assert str(e.value).splitlines() == ["notebook parameters: recipy: unknown key (did you mean 'recipe'?)",
                                         "notebook parameters: bogus_key: unknown key"]
    assert e.value._render_traceback_() == [f"ParamsError: {line}" for line in str(e.value).splitlines()]
    # a recipe's own keys (`papermill -f params/default.yaml`) are refused with what to pass instead
    with pytest.raises(ParamsError, match=r"judge: unknown key; a stage notebook takes a recipe, not its keys"):
        from_namespace({"judge": {"k": 1}, "In": ["# Parameters\njudge = {'k': 1}\n"]})
    # a variable the user made in a cell of their own is not a parameter papermill injected: no error
    recipe = str(root / "params" / "smoke.yaml")
    assert from_namespace({"recipe": recipe, "run_name": "x", "selected": [1], "In": ["selected = [1]"]}
                          ).run_name == "x"
    assert from_namespace({"recipe": recipe, "run_name": None, "In": []}).run_name == "smoke"


def test_a_notebook_without_a_recipe_is_told_to_name_one():
    with pytest.raises(ParamsError, match="recipe: a params file is needed"):
        from_namespace({"recipe": None, "In": []})


def test_an_unknown_top_level_key_in_a_params_file_suggests_the_known_one(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("run_name: x\njudg:\n  k: 1\n")
    with pytest.raises(ParamsError, match=r"p.yaml:2: judg: unknown key \(did you mean 'judge'\?\)$"):
        load_params(f)
