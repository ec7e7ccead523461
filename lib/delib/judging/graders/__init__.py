"""Rule-based graders (stage 03 and the RL reward; stage 06 grades with them too): no model in the loop.

`refusal` labels a completion as XSTest does; `propositions` are Rule-Based-Rewards facts about a response;
`style` reads the action a response took and scores its style for the action the spec asks for; `text` is what
they all read. The names below are the package's public API.
"""
from delib.judging.graders.text import (
    Message, Chat, last_user_message, completion_text, normalise, sentences, cue)
from delib.judging.graders.refusal import (
    REFUSAL_CUES, LECTURE, REFERRAL, REDIRECT, EMPATHY, PIVOT_TO_ANSWER, ASKS_JUSTIFICATION, GIVES_REASON, DISAGREES, PLEASANTRY, RefusalClass, REFUSAL_LABELS, XSTEST_LABELS, RefusalLabel, ANSWER_WORDS, OPENING_SENTENCES, classify_refusal, STRMATCH_PREFIXES, STRMATCH_KEYWORDS, strmatch_refusal, keyword_refusal)
from delib.judging.graders.propositions import (
    Verdict, apology, inability_to_comply, judgemental, encourage_professional_help, provides_resources, apology_acknowledges_emotional_state, gentle_encouragement_for_help, meta_commentary, reference_safety_policy, requests_information, third_person, disclaimer, threatening_language, insulting_language, definitive_verbiage, additional_content, content_sentences, fully_complies, empty_response, Grader, LLM_QUESTIONS, grade_with_llm, disallowed_content, PROPOSITIONS, LLM_ONLY, explain_propositions, grade_propositions)
from delib.judging.graders.style import (
    Action, ResponseAction, RESPONSE_TYPES, RBR_RESPONSE_TYPES, HELP_PROPOSITIONS, ResponseType, degenerate, type_response, STYLE, STYLE_GATES, style_for, spec_checks, style_score)

__all__ = ["Message", "Chat", "last_user_message", "completion_text", "normalise", "sentences", "cue", "REFUSAL_CUES", "LECTURE", "REFERRAL", "REDIRECT", "EMPATHY", "PIVOT_TO_ANSWER", "ASKS_JUSTIFICATION", "GIVES_REASON", "DISAGREES", "PLEASANTRY", "RefusalClass", "REFUSAL_LABELS", "XSTEST_LABELS", "RefusalLabel", "ANSWER_WORDS", "OPENING_SENTENCES", "classify_refusal", "STRMATCH_PREFIXES", "STRMATCH_KEYWORDS", "strmatch_refusal", "keyword_refusal", "Verdict", "apology", "inability_to_comply", "judgemental", "encourage_professional_help", "provides_resources", "apology_acknowledges_emotional_state", "gentle_encouragement_for_help", "meta_commentary", "reference_safety_policy", "requests_information", "third_person", "disclaimer", "threatening_language", "insulting_language", "definitive_verbiage", "additional_content", "content_sentences", "fully_complies", "empty_response", "Grader", "LLM_QUESTIONS", "grade_with_llm", "disallowed_content", "PROPOSITIONS", "LLM_ONLY", "explain_propositions", "grade_propositions", "Action", "ResponseAction", "RESPONSE_TYPES", "RBR_RESPONSE_TYPES", "HELP_PROPOSITIONS", "ResponseType", "degenerate", "type_response", "STYLE", "STYLE_GATES", "style_for", "spec_checks", "style_score"]
