"""Evaluation library: VBench aggregation, model-free temporal metrics, bootstrap statistics,
run comparison reports and prompt suites.

Import the submodules directly (``from pisces_cli.evaluation.vbench_aggregate import aggregate_vbench``);
this package imports nothing heavy on its own.
"""
