"""The seven stages of the method, by the names of their notebooks and of their folders in a run.

Every module names a stage through these constants, never a literal.
"""

POLICY = "01_policy"
GENERATE = "02_generate"
JUDGE = "03_judge"
SFT = "04_sft"
RL = "05_rl"
EVALUATE = "06_evaluate"
ANALYSIS = "07_analysis"
STAGES = (POLICY, GENERATE, JUDGE, SFT, RL, EVALUATE, ANALYSIS)
# The params section each stage owns (01 owns none: spec and prompts feed every stage).
STAGE_SECTION = {GENERATE: "generate", JUDGE: "judge", SFT: "sft", RL: "rl", EVALUATE: "evaluate",
                 ANALYSIS: "analysis"}
# The training stages by the params section each owns ("sft", "rl").
TRAINING = {"sft": SFT, "rl": RL}
# Each calling stage's folder holds the token and time totals of its model calls (and trainers) of its last run.
USAGE_FILE = "usage.json"
