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
# What else there is to know of each stage (its params, roles, files, module): the registry, delib.run.registry.
# The training stages by the params section each owns ("sft", "rl").
TRAINING = {"sft": SFT, "rl": RL}
# Each calling stage's folder holds the token and time totals of its model calls (and trainers) of its last run.
USAGE_FILE = "usage.json"
