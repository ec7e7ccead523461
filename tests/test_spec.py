"""The spec format: ids, slugs, the mapping, errors with file and line, and spec_for_category."""
import re
import textwrap

import pytest

from delib.spec.document import SpecError, load_spec, parse_spec, slugify, spec_for_category

SPEC = textwrap.dedent("""\
    ---
    categories:
      violence:
        summary: Violence in brief.
        sections: [violence]
        levels:
          - {name: V0, action: comply, section: violence-v0}
          - {name: V1, action: refuse}
      fraud:
        sections: [fraud]
        style: [fraud-style]
    style:
      refuse: [hard-refusal]
      comply: [comply]
    ---
    Preamble text.

    # Violence {#violence authority=platform}
    Violence intro paragraph.

    Second paragraph.
    ## Rules
    Violence rules.
    ### V0 {#violence-v0}
    Fiction is fine.
    # Fraud {#fraud}
    Fraud intro.
    ## Rules
    Fraud rules.
    ```
    # not a heading inside a fence
    ```
    ## Fraud style {#fraud-style}
    Warn about scams.
    # Style
    ## Hard refusal
    Apologise briefly.
    ## Comply {#comply}
    Just help.
    """)


@pytest.fixture
def spec():
    return parse_spec(SPEC, "s.md")


def test_sections_ids_levels(spec):
    assert list(spec.sections) == ["violence", "rules", "violence-v0", "fraud", "fraud-rules", "fraud-style",
                                   "style", "hard-refusal", "comply"]
    v = spec.sections["violence"]
    assert (v.level, v.title, v.line, v.attrs) == (1, "Violence", 18, {"authority": "platform"})
    assert v.children == ["rules"] and spec.sections["violence-v0"].parent == "rules"
    assert "not a heading" in spec.sections["fraud-rules"].body  # fenced code is body text
    assert spec.preamble == "Preamble text."


def test_repeated_titles_get_parent_prefixed_ids():
    s = parse_spec("# A\nx\n## Rules\ny\n# B\nz\n## Rules\nw\n## Rules\nv\n")
    assert list(s.sections) == ["a", "rules", "b", "b-rules", "b-rules-2"]


def test_slug():
    assert slugify("Self-harm: S1 (ideation)") == "self-harm-s1-ideation"


def test_mapping_and_summaries(spec):
    assert spec.categories["violence"].summary == "Violence in brief."
    assert spec.categories["fraud"].summary == "Fraud intro."  # default: first paragraph
    assert spec.categories["violence"].levels[0] == {"name": "V0", "action": "comply", "section": "violence-v0",
                                                     "said": "comply"}
    owner = spec.section_category()
    assert owner["violence-v0"] == "violence" and owner["fraud-style"] == "fraud" and "comply" not in owner


def test_spec_for_category_shows_own_full_text_and_all_summaries(spec):
    text = spec_for_category(spec, "violence")
    assert "Violence in brief." in text and "Fraud intro." in text  # every summary
    assert "[hard-refusal] Hard refusal" in text and "Apologise briefly." in text  # style guidelines
    assert "[violence-v0] V0" in text and "Fiction is fine." in text  # own full text, labelled
    assert "Fraud rules." not in text and "Warn about scams." not in text  # not another category's detail
    assert "V1 -> refuse" in text
    assert "Warn about scams." in spec_for_category(spec, "fraud")  # category-specific style
    with pytest.raises(KeyError, match="'arson'"):
        spec_for_category(spec, "arson")


@pytest.mark.parametrize("text, message", [
    ("# A {#x}\nbody\n# B {#x}\nbody\n", "s.md:3: duplicate section id 'x' (first used on line 1)"),
    ("# A\nbody\n## Empty\n# C\nbody\n", "s.md:3: section 'empty' ('Empty') is empty"),
    ("---\ncategories: [\n---\n# A\nbody\n", "s.md:3: bad YAML in the category mapping"),
    ("---\ncategories: {}\n# A\nbody\n", "s.md:1: front matter opened with '---' is never closed"),
    ("---\n- a list\n---\n# A\nbody\n", "s.md:2: the category mapping must be a YAML mapping"),
    ("---\ncategories:\n  c: {sections: [a, nope]}\n---\n# A\nbody\n", "s.md:3: categories.c.sections: no section has id 'nope'"),
    ("---\ncategories:\n  c: {sections: []}\n---\n# A\nbody\n", "s.md:3: categories.c.sections: a category needs at least one section"),
    ("---\ncategories:\n  c: {sections: [a]}\nstyle:\n  refuse: [a]\n  comply: [zz]\n---\n# A\nbody\n", "s.md:6: style.comply: no section has id 'zz'"),
    ("---\ncategories:\n  c:\n    sections: [a]\n    levels: [{name: L, action: ignore}]\n---\n# A\nbody\n", "s.md:5: categories.c.levels.0.action"),
    ("---\ncategorys: {}\n---\n# A\nbody\n", "s.md:2: categorys: unknown key"),
    ("---\nactions: {nah: refuse}\ncategories:\n  c:\n    sections: [a]\n    levels: [{name: L, action: nope}]\n---\n# A\nbody\n",
     "s.md:6: categories.c.levels.0.action: unknown action 'nope' (known: comply, refuse, safe_complete, nah;"),
    ("---\nactions:\n  refuse: refuse\n---\n# A\nbody\n", "s.md:3: actions.refuse: 'refuse' is already an action"),
    ("---\nactions:\n  deny: block\n---\n# A\nbody\n", "s.md:3: actions.deny: Input should be"),
    ("---\ncategories:\n  refuse: {sections: [a]}\n---\n# A\nbody\n", "s.md:3: categories.refuse: a category may not be named as an action or 'all'"),
])
def test_errors_name_file_and_line(text, message):
    with pytest.raises(SpecError) as e:
        parse_spec(text, "s.md")
    assert str(e.value).startswith(message), str(e.value)


def test_mapping_file_beside_the_spec(tmp_path):
    (tmp_path / "spec.md").write_text("# A {#a}\nbody\n")
    (tmp_path / "map.yaml").write_text("categories:\n  c:\n    sections: [b]\n")
    with pytest.raises(SpecError, match=r"map.yaml:3: categories.c.sections: no section has id 'b'"):
        load_spec(tmp_path / "spec.md", tmp_path / "map.yaml")
    (tmp_path / "map.yaml").write_text("categories:\n  c:\n    sections: [a]\n")
    assert load_spec(tmp_path / "spec.md", tmp_path / "map.yaml").categories["c"].summary == "body"


def test_plain_markdown_without_mapping_parses():
    s = parse_spec("Intro\n\n# Overview\ntext\n## Details ##\nmore\n")
    assert list(s.sections) == ["overview", "details"] and s.categories == {}


def test_round_trip(spec):
    from delib.spec.document import Spec
    again = Spec.from_dict(spec.to_dict())
    assert spec_for_category(again, "violence") == spec_for_category(spec, "violence")


def test_default_spec(root):
    s = load_spec(root / "specs" / "default" / "spec.md")
    assert len(s.categories) >= 6
    for cat in s.categories.values():
        actions = {lv["action"] for lv in cat.levels}
        assert "comply" in actions and actions & {"refuse", "safe_complete"}, cat.id
    assert {"comply", "refuse", "safe_complete"} <= set(s.style)
    assert s.categories["self_harm"].style, "self-harm needs its own safe-completion style"


def test_tiny_spec(root):
    s = load_spec(root / "specs" / "tiny" / "spec.md")
    assert set(s.categories) == {"illicit_behaviour", "self_harm"}


def test_cli_lists_sections_and_renders_a_category(root, capsys):
    import json

    from delib import cli

    assert cli.main(["spec", str(root / "specs" / "tiny" / "spec.md"), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {"id": "self-harm-s1", "category": "self_harm"}.items() <= next(
        s for s in listed["sections"] if s["id"] == "self-harm-s1").items()
    assert cli.main(["spec", str(root / "specs" / "tiny" / "spec.md"), "--category", "self_harm", "--json"]) == 0
    rendered = json.loads(capsys.readouterr().out)
    assert "[self-harm-s1]" in rendered["text"] and 100 < rendered["tokens"] < 1000
    assert cli.main(["spec", str(root / "specs" / "tiny" / "spec.md"), "--category", "arson"]) == 2
    assert "no category 'arson'" in capsys.readouterr().err
    assert cli.main(["spec", str(root / "nope.md")]) == 2
    assert "spec file not found" in capsys.readouterr().err


def test_categories_share_everything_before_their_own_policy(spec, root):
    """The shared part comes first, so llama.cpp re-reads only a category's own text when the category changes."""
    for s in (spec, load_spec(root / "specs" / "default" / "spec.md")):
        texts = [spec_for_category(s, c) for c in s.categories]
        shared = texts[0][:texts[0].index("## Policy for")]
        assert all(t.startswith(shared) for t in texts)
        assert len(shared) > 0.4 * len(texts[0])  # most of the text: summaries and style guidelines


def test_a_specs_own_action_words_map_to_ours_and_show_beside_them():
    s = parse_spec("---\nactions: {decline: refuse, help: comply}\ncategories:\n  c:\n    sections: [a]\n"
                   "    levels: [{name: L0, action: help}, {name: L1, action: decline}]\n---\n# A {#a}\nbody\n", "s.md")
    assert [lv["action"] for lv in s.categories["c"].levels] == ["comply", "refuse"]
    assert s.action("decline") == "refuse" and s.action("refuse") == "refuse" and s.action("maybe") is None
    assert "Levels and actions: L0 -> help (comply); L1 -> decline (refuse)" in spec_for_category(s, "c")


def test_a_categorys_style_checks_are_read_and_an_unknown_proposition_is_named_with_its_line(tmp_path):
    from delib.judging import graders
    from delib.spec.document import Spec
    text = ("---\nactions: {help: comply, redirect: safe_complete}\ncategories:\n  c:\n    sections: [a]\n"
            "    checks:\n      redirect: {provides_resources: true,\n                 disclaimer: [false, 0.5]}\n"
            "    style: {redirect: [a]}\n"
            "reference_figures: {'style_safe_completion[c]': 'o1 0.9'}\n---\n# A {#a}\nbody\n")
    s = parse_spec(text, "s.md")  # the spec's own action word keys checks and style
    assert s.categories["c"].checks["safe_complete"] == {"provides_resources": [True, 2.0], "disclaimer": [False, 0.5]}
    assert s.categories["c"].style_by_action == {"safe_complete": ["a"]}
    own = s.checks_by_category()
    assert graders.spec_checks(own, "c", "safe_complete")["disclaimer"] == [False, 0.5]
    assert graders.spec_checks(own, "c", "comply") == {} and graders.spec_checks(own, "other", "refuse") == {}
    assert s.reference_figures == {"style_safe_completion[c]": "o1 0.9"}
    assert Spec.from_dict(s.to_dict()).categories["c"].checks == s.categories["c"].checks
    bad = text.replace("provides_resources: true,", "provides_resourcez: true,")
    with pytest.raises(SpecError) as e:
        parse_spec(bad, "s.md")
    assert str(e.value).startswith("s.md:7: categories.c.checks.redirect.provides_resourcez: unknown proposition")
    # with the mapping in a file of its own, the error names that file and its line
    (tmp_path / "spec.md").write_text("# A {#a}\nbody\n")
    (tmp_path / "map.yaml").write_text(bad.split("---\n")[1])
    with pytest.raises(SpecError) as e:
        load_spec(tmp_path / "spec.md", tmp_path / "map.yaml")
    assert str(e.value).startswith(f"{tmp_path / 'map.yaml'}:6: categories.c.checks.redirect.provides_resourcez")


def test_two_levels_of_one_name_and_a_category_named_all_are_refused():
    two = ("---\ncategories:\n  c:\n    sections: [a]\n    levels:\n      - {name: A, action: comply}\n"
           "      - {name: A, action: refuse}\n---\n# A {#a}\nbody\n")
    with pytest.raises(SpecError, match=r"^s.md:7: categories.c.levels.1.name: level 'A' is already level 0 of 'c'"):
        parse_spec(two, "s.md")
    with pytest.raises(SpecError, match=r"^s.md:3: categories.all: a category may not be named as an action or 'all'"):
        parse_spec("---\ncategories:\n  all: {sections: [a]}\n---\n# A {#a}\nbody\n", "s.md")


def test_no_category_of_the_default_spec_is_named_in_the_library(root):
    """Everything category-specific comes from the spec: the graders, metrics and report name none of its ids."""
    ids = list(load_spec(root / "specs" / "default" / "spec.md").categories)
    quoted = re.compile("|".join(rf"[\"'\[]{c}[\"'\]]" for c in ids))  # as a string or a metric's [category]
    named = [(p.relative_to(root), m.group()) for p in (root / "lib").rglob("*.py") for m in quoted.finditer(p.read_text())]
    assert named == []


def test_a_level_is_found_by_name_or_section_and_a_missing_one_is_none(root):
    spec = load_spec(root / "specs" / "default" / "spec.md")
    by_name = spec.level("violence_weapons", "V0")
    assert by_name is not None and spec.level("violence_weapons", by_name["section"]) == by_name
    for missing in (None, "", float("nan"), 0.0, "V9"):  # NaN: a table row without a level
        assert spec.level("violence_weapons", missing) is None
    assert spec.level("no_such_category", "V0") is None and spec.level(None, "V0") is None
