"""Studies: the paper's grid of runs — model sets x training seeds x init seeds — one run
folder each, and a table of mean ± std per model set; run one after another here, or spread over
a Ray cluster (`cluster`, the only module that imports Ray)."""

from softprompt.study.grid import RaySettings, StudyConfig, load_study, planned_runs
from softprompt.study.runner import run_study

__all__ = ["RaySettings", "StudyConfig", "load_study", "planned_runs", "run_study"]
