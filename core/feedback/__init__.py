"""The feedback studio's library: collect human labels on sampled responses, export them, measure agreement, train on them.

- ``core.feedback.store``: the SQLite store (projects, items, K responses, annotators, labels)
- ``core.feedback.sampling``: prompt files and the built-in prompt sets; sampling K responses per prompt
- ``core.feedback.export``: TRL preference / K-wise ranking / QA-Feedback / SFT / ``datasets`` exports; imports
- ``core.feedback.agreement``: inter-annotator agreement on rankings, Krippendorff's alpha on ratings
- ``core.feedback.train``: a holistic reward model (K-wise ranking loss) on frozen features, from the labels

Importing ``core.feedback`` is cheap: no torch, no Streamlit (see docs/feedback.md).
"""

from core.feedback.store import FeedbackError, FeedbackStore, default_db_path

__all__ = ["FeedbackError", "FeedbackStore", "default_db_path"]
