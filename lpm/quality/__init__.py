"""Quality beside carbon: image metrics (:mod:`lpm.quality.metrics`) and the per-job evaluation
(:mod:`lpm.quality.evaluate`) behind the record's `quality` block.

Both import torch and MONAI: import them only where a job runs, never from the report.
"""
