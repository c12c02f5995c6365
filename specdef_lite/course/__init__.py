"""Layer 6, the course: explorers (``widgets``), exercise checkers and the HTML book. Reads results, computes none.

| module | idea |
|---|---|
| ``widgets`` | one interactive explorer per notebook over a precomputed ``experiments`` result |
| ``feedback`` | ``Feedback``, ``compare``, the ``exercise`` registry: the core every checker shares |
| ``exercises`` | ``check(name, answer)``: feedback that never reveals the answer to a blank |
| ``exercises_course`` | the course's exercises, each registered beside the computation that checks it |
| ``execution`` | papermill runs the notebooks headless, with their test or default parameters |
| ``book`` | the executed course as static HTML (``make book``) |
"""
