"""OpenAI's grader objects, evaluated by Honing: string_check, text_similarity, python (in a bubblewrap
sandbox), score_model (a judge model Honing loads) and multi. See docs/graders.md.

    grader = load_grader(spec)          # GraderError("<path>: <what>") when it does not validate
    with grader:                         # starts / stops sandbox workers and judges lazily
        results = grader.grade([Sample(output_text="...", item={...}), ...])
"""

from honing.graders.base import Grader
from honing.graders.core import GraderError, GradeResult, Sample, run_result_json
from honing.graders.load import GRADER_TYPES, load_grader
from honing.graders.sandbox import SandboxLimits

__all__ = [
    "GRADER_TYPES",
    "GradeResult",
    "Grader",
    "GraderError",
    "Sample",
    "SandboxLimits",
    "load_grader",
    "run_result_json",
]
