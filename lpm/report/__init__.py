"""Reports on a sweep's records: tables, the study's four figures, headlines, what-if pricing.

`python -m lpm.report multirun/<sweep>`; nothing here imports torch, Lightning or CodeCarbon.
"""
