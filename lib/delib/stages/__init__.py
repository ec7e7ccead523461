"""The seven stages of the method as plain Python tasks.

Each stage is a module here (`s02_generate`, ...) whose step functions do the stage's work one step at a time and
write its files (through `delib.run.files`), and whose `run(params)` calls those steps in order. The stage's
notebook calls the same steps, one cell each, and shows what each made; the runner (`delib run`), a script
(`python -m delib.stages generate RECIPE`) and a test call `run` the same way.

The registry of the stages (each one's params section, the sections of other stages it reads, the model roles it
calls, the files it reads and writes) is `delib.run.registry`, re-exported here: `REGISTRY`, `get`, `module`.
"""
from delib.run.registry import REGISTRY, Stage, get, module

__all__ = ["REGISTRY", "Stage", "get", "module"]
