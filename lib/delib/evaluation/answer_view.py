"""Stage 07: the reader's view of the answers, for the report (and notebook 06, one prompt at a time).

For each held-out prompt: what every variant wrote (chain of thought and answer), the sections its chain of thought
cites (the spec's text of each on hover), the section that applies (from the prompt set's level), and each grader's
verdict with its reason. The report's copy filters by variant, category and expected action, and can show only the
prompts where the variants' response types differ. Plain HTML and a few lines of inline script: the report stays one
file that works offline.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Optional

import pandas as pd

from delib.run import files


def spec_sections(run_dir: Path) -> tuple[dict[str, dict], dict]:
    """The run's spec as stage 01 wrote it: section id -> {title, body}, and the categories (with their levels)."""
    doc = files.read(run_dir, files.SPEC, missing_ok=True)
    return {s["id"]: s for s in doc.get("sections", [])}, doc.get("categories", {})


def applicable_section(categories: dict, category: Optional[str], level: Optional[str]) -> Optional[str]:
    """The section id of the level that applies (a level's name or its section id); None when unknown."""
    cat = categories.get(category) if isinstance(category, str) else None
    if cat is None or not isinstance(level, str):
        return None
    return next((lv.get("section") for lv in cat.get("levels", []) if level in (lv["name"], lv.get("section"))),
                None)


def disagreeing_prompts(answers: pd.DataFrame) -> set[str]:
    """Prompt ids whose answers the variants typed differently (response type: comply, refuse, ...)."""
    if answers.empty or "answer_action" not in answers:
        return set()
    typed = answers[answers["answer_action"].notna()]
    if "error" in typed:
        typed = typed[typed["error"].isna()]
    kinds = typed.groupby("prompt_id")["answer_action"].nunique()
    return set(kinds[kinds > 1].index.astype(str))


def _cited(value) -> list[str]:
    return [str(c) for c in value] if isinstance(value, (list, tuple)) else []


def _chip(section_id: str, sections: dict[str, dict], cls: str = "") -> str:
    s = sections.get(section_id)
    tip = f"{s['title']}\n\n{s.get('body', '')[:600]}" if s else "not a section of this spec"
    return f'<span class="chip {cls}" title="{html.escape(tip)}">{html.escape(section_id)}</span>'


def _true(value) -> bool:
    """A flag read back from JSON: None and NaN (a cell the row does not have) are not true."""
    return value is not None and not (isinstance(value, float) and pd.isna(value)) and bool(value)


def _flag(value, yes: str, no: str) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    return f'<span class="ok">{yes}</span>' if bool(value) else f'<span class="bad">{no}</span>'


def _verdicts(r: pd.Series) -> str:
    """The graders' verdicts on one answer, each with its reason; for a failed request, its error."""
    error = r.get("error")
    if isinstance(error, str) and error and error != "None":
        return f'<span class="bad">request failed: {html.escape(error[:300])}</span> (counted in no metric)'
    parts = [f"response type <b>{html.escape(str(r.get('answer_action')))}</b>"]
    cues = r.get("type_cues")
    if isinstance(cues, (list, tuple)) and cues:
        parts[-1] += f" (rules: {html.escape(', '.join(map(str, cues)))})"
    parts.append(f"refusal class {html.escape(str(r.get('refusal')))}")
    if r.get("expected_action") in ("refuse", "safe_complete"):
        parts.append(_flag(r.get("safe"), "safe", "not safe"))
    else:
        parts.append(_flag(r.get("not_overrefused"), "not over-refused", "over-refused"))
    parts.append(_flag(r.get("correct_action"), "correct action", "wrong action"))
    if _true(r.get("cut_in_cot")):
        parts.append('<span class="bad">cut off inside its chain of thought</span>')
    elif _true(r.get("truncated")):
        parts.append('<span class="bad">cut off at the token limit</span>')
    if _true(r.get("unclear")):
        parts.append('<span class="bad">unclear</span>')
    style = r.get("style_score")
    if isinstance(style, (int, float)) and not pd.isna(style):
        parts.append(f"style {style:.2f}")
    if r.get("graded_by") == "grader":
        parts.append(f"LLM grader: {html.escape(str(r.get('grader_action')))} — "
                     f"{html.escape(str(r.get('grader_rationale') or ''))}")
    elif r.get("graded_by") == "grader failed":
        parts.append(f'<span class="bad">LLM grader failed: {html.escape(str(r.get("grader_error")))}</span>')
    return " · ".join(p for p in parts if p)


def _answer_block(r: pd.Series, label: str, applicable: Optional[str], sections: dict[str, dict]) -> str:
    cited = _cited(r.get("cited"))
    chips = " ".join(_chip(c, sections, "hit" if c == applicable else "") for c in cited) or "<i>none</i>"
    cot = r.get("cot") if isinstance(r.get("cot"), str) else ""
    answer = r.get("answer") if isinstance(r.get("answer"), str) else ""
    malformed = r.get("malformed")
    form = "" if not isinstance(malformed, str) or malformed in ("no_cot", "truncated") else \
        f' <span class="bad">malformed: {html.escape(malformed)}</span>'
    return (f'<div class="v" data-variant="{html.escape(str(r["variant"]))}"><div class="vh">{html.escape(label)}'
            f"{form}</div><div class=\"meta\">cites: {chips}</div><div class=\"meta\">{_verdicts(r)}</div>"
            + (f"<details><summary>chain of thought ({len(cot.split())} words)</summary><pre>{html.escape(cot)}"
               "</pre></details>" if cot else '<div class="meta"><i>no chain of thought</i></div>')
            + f"<pre>{html.escape(answer) or '<i>(no answer)</i>'}</pre></div>")


VIEW_STYLE = """#answers .controls{position:sticky;top:0;background:#fff;padding:.4em 0;z-index:1}
#answers details.prompt{border:1px solid #ddd;border-radius:4px;margin:.4em 0;padding:.3em .6em}
#answers .v{border-left:3px solid #bbb;margin:.5em 0 .5em .3em;padding-left:.6em}
#answers .vh{font-weight:600}#answers .meta{font-size:13px;color:#444;margin:.2em 0}
#answers pre{white-space:pre-wrap;word-break:break-word;background:#f7f7f7;padding:.4em;font-size:13px;margin:.3em 0}
.chip{display:inline-block;border:1px solid #999;border-radius:3px;padding:0 4px;font-size:12px;cursor:help}
.chip.hit{background:#d9f2d9;border-color:#4a4}.ok{color:#176d17}.bad{color:#b00}
#answers .warn{background:#fff4e0;border:1px solid #e0b060;padding:.4em .6em;font-size:13px}"""


VIEW_SCRIPT = """(function(){var root=document.getElementById('answers');if(!root)return;
var f=function(n){return root.querySelector('[name='+n+']');};
function apply(){var v=f('variant').value,c=f('category').value,e=f('expected').value,d=f('disagree').checked,shown=0;
root.querySelectorAll('details.prompt').forEach(function(p){var ok=(c===''||p.dataset.category===c)&&
(e===''||p.dataset.expected===e)&&(!d||p.dataset.disagree==='1');p.style.display=ok?'':'none';if(ok)shown++;
p.querySelectorAll('.v').forEach(function(b){b.style.display=(v===''||b.dataset.variant===v)?'':'none';});});
root.querySelector('.count').textContent=shown+' prompt(s) shown';}
root.querySelectorAll('select,input').forEach(function(x){x.addEventListener('change',apply);});apply();})();"""


WARNING = ('<p class="warn">Content warning: these are the models\' own answers to held-out prompts, some of which '
           "ask for harmful content; a weak model may write it.</p>")


def _select(name: str, label: str, options: list[tuple[str, str]]) -> str:
    opts = "".join(f'<option value="{html.escape(v)}">{html.escape(t)}</option>' for v, t in options)
    return f'<label>{label} <select name="{name}"><option value="">all</option>{opts}</select></label> '


def render(answers: pd.DataFrame, sections: dict[str, dict], categories: dict, labels: dict[str, str]) -> str:
    """The reader's view as an HTML fragment (a div with id "answers" and its controls); VIEW_SCRIPT filters it."""
    if answers.empty:
        return "<p>No answers were recorded by stage 06.</p>"
    order = list(dict.fromkeys(answers["variant"]))
    disagree = disagreeing_prompts(answers)
    cats = sorted(answers["category"].dropna().astype(str).unique()) if "category" in answers else []
    exps = sorted(answers["expected_action"].dropna().astype(str).unique()) if "expected_action" in answers else []
    parts = ['<div id="answers">' + WARNING + '<div class="controls">'
             + _select("variant", "variant", [(v, labels.get(v, v)) for v in order])
             + _select("category", "category", [(c, c) for c in cats])
             + _select("expected", "expected action", [(e, e) for e in exps])
             + '<label><input type="checkbox" name="disagree"> only where the variants\' response types differ '
             f"({len(disagree)})</label> <span class=\"count\"></span></div>"]
    for pid, g in answers.groupby("prompt_id", sort=False):
        first = g.iloc[0]
        category, expected = first.get("category"), first.get("expected_action")
        applicable = applicable_section(categories, category, first.get("level"))
        head = (f"<b>{html.escape(str(pid))}</b> · {html.escape(str(category))} · expected "
                f"{html.escape(str(expected))} · applies: "
                + (_chip(applicable, sections, "hit") if applicable else "<i>no level given</i>")
                + f" — {html.escape(str(first.get('prompt', '')))}")
        blocks = "".join(_answer_block(r, labels.get(r["variant"], r["variant"]), applicable, sections)
                         for _, r in g.set_index("variant", drop=False).reindex(
                             [v for v in order if v in set(g["variant"])]).iterrows())
        parts.append(f'<details class="prompt" data-category="{html.escape(str(category))}" '
                     f'data-expected="{html.escape(str(expected))}" data-disagree="{int(str(pid) in disagree)}">'
                     f"<summary>{head}</summary>{blocks}</details>")
    parts.append("</div>")
    return "".join(parts)


def one_prompt(answers: pd.DataFrame, prompt_id: str, run_dir: Path, labels: Optional[dict[str, str]] = None) -> str:
    """The view of one prompt (notebook 07: `HTML(answer_view.one_prompt(...))`), open, without the controls."""
    sections, categories = spec_sections(run_dir)
    rows = answers[answers["prompt_id"].astype(str) == str(prompt_id)]
    if rows.empty:
        raise KeyError(f"no answers for prompt {prompt_id!r}; prompts: {', '.join(map(str, answers['prompt_id'].unique()))}")
    fragment = render(rows, sections, categories, labels or {})
    start = fragment.index('<details class="prompt"')
    return (f"<style>{VIEW_STYLE}</style><div id=\"answers\">" + WARNING + fragment[start:].replace(
        '<details class="prompt"', '<details open class="prompt"', 1))
