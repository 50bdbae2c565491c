"""Evaluation, in one place: the commands, the HEAR protocol they run, and the adapters for other suites.

Commands (``python -m encodecmae_s3prl.evaluation.<name> --help``):

- ``compare``: any s3prl upstreams side by side on any tasks, under the HEAR protocol, one table;
- ``table1``: the paper's Table 1 (HEAR tasks as HEAR distributes them) beside the paper's figures;
- ``hear_kit_check``: our HEAR protocol against the organisers' own kit (heareval 2021.1.3), each side on its own;
- ``xares``: X-ARES's encoder interface writer (``xares.XaresEncoder`` is the class X-ARES loads).

Modules the HEAR kit and other suites load:

- ``hear_api``: the HEAR 2021 module interface (``load_model``, ``get_scene_embeddings``, ...);
- ``xares``, ``mteb``: encoders in the shape X-ARES and MTEB's audio tasks call.

The HEAR protocol, in three parts:

- ``task_table``: every task the commands run, our probe folders and s3prl's recipes (``recipe_tasks``);
- ``embedding_cache``: every hidden state's time-mean per clip, cached once per (upstream, task), in the kit's
  batches; clips reach each upstream at the rate its model runs at (``native_rate``);
- ``mlp_grid``: the kit's MLP, grid, early stopping and k-fold rule, on the cache.

``paper_table1`` holds the paper's Table 1 figures. This package builds on ``downstream_probes`` (the task
contract, the MLP, metrics) and on the s3prl integration (``registry``, ``compat``); neither imports it.
"""
