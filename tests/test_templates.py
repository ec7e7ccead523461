"""Prompt templates: the defaults beside the default spec give the prompts the roles are sent; a params file can
point any of them at another file; a field that does not exist, or a lone brace, is refused with file and line
before anything runs."""
from __future__ import annotations

import pytest

from delib.evaluation.lineup import resolve_variants
from delib.generation.generate import generation_messages
from delib.judging.judge import judge_messages
from delib.spec.document import load_spec
from delib.run import templates
from delib.run.config import ParamsError, validate_params
from delib.run.runner import check_named_files, named_files


def test_the_default_templates_give_the_spec_first_and_fill_every_field():
    system = generation_messages("q", "SPEC TEXT", example_id="sec-1")[0]["content"]
    assert system.startswith("<spec>\nSPEC TEXT\n</spec>") and "e.g. sec-1" in system and "{" not in system
    judged = judge_messages("q", "a", "SPEC TEXT", cot="c")[0]["content"]
    assert judged.startswith("<spec>\nSPEC TEXT\n</spec>") and '"cot_quality": <0-10>' in judged
    assert "cot_quality" not in judge_messages("q", "a", "SPEC TEXT")[0]["content"]  # the reward's view
    assert '{"reasoning": "<one sentence>", "refused": 0 or 1' in templates.fill(templates.load_template("strongreject"))


def test_a_recipe_points_the_generator_template_at_its_own_file(tmp_path, root):
    own = tmp_path / "gen.txt"
    own.write_text("Policy:\n{spec}\nCite ids like {example_id}. Braces: {{ok}}.\n")
    params = validate_params({"run_name": "t", "outputs_dir": str(tmp_path),
                              "spec": {"templates": {"generator": str(own)}},
                              "evaluate": {"variants": ["spec_prompt"]}})
    text = templates.load_template("generator", params)
    assert generation_messages("q", "S", example_id="x", template=text)[0]["content"] == \
        "Policy:\nS\nCite ids like x. Braces: {ok}."
    spec = load_spec(root / "specs" / "default" / "spec.md")
    variant = resolve_variants(params, spec)[0]
    assert all(p.startswith("Policy:\n# Safety specification") for p in variant.category_prompts.values())
    assert (("spec", "templates", "generator"), own) in named_files(params)  # in every stage's fingerprint


@pytest.mark.parametrize("text, message", [
    ("Spec:\n{spec}\nUse {section_id}.\n", ":3: the generator template names a field {section_id} that does not exist "
                                           "(its fields: {spec}, {example_id};"),
    ('JSON: {"a": 1}\n', ':1: the generator template names a field {"a"} that does not exist'),
    ("one } brace\n", ":1: Single '}' encountered in format string (write a literal brace as {{ or }})"),
])
def test_a_template_naming_a_field_that_does_not_exist_is_refused_with_file_and_line(tmp_path, text, message):
    bad = tmp_path / "gen.txt"
    bad.write_text(text)
    with pytest.raises(templates.TemplateError) as e:
        templates.check_template(bad.read_text(), "generator", str(bad))
    assert str(e.value).startswith(f"{bad}{message}"), str(e.value)


def test_a_run_with_a_bad_template_stops_before_any_stage_naming_the_params_line(tmp_path, monkeypatch, root):
    monkeypatch.setenv("DELIB_ROOT", str(root))
    bad = tmp_path / "judge.txt"
    bad.write_text("<spec>\n{spec}\n</spec>\nGrade it: {criteria}\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"run_name: t\noutputs_dir: {tmp_path}\nspec:\n  templates:\n    judge: {bad}\n")
    params = validate_params({"run_name": "t", "outputs_dir": str(tmp_path), "spec": {"templates": {"judge": str(bad)}}})
    with pytest.raises(ParamsError) as e:
        check_named_files(params, recipe)
    assert str(e.value) == (f"{recipe}:5: spec.templates.judge: {bad}:4: the judge template names a field {{criteria}} "
                            "that does not exist (its fields: {spec}, {form}, {cot_criterion}; a literal brace is "
                            "written {{ or }})")
